"""Sub-commands of `audio-omni` (see `orchestrator.cli`), one module each, imported only when run."""
