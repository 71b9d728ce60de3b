"""Sub-commands of `audio-omni-train` (see `training.cli`). Helpers here stay standard-library only."""


def comma_list(value: str) -> tuple[str, ...]:
    """An argparse `type`: 'a, b,,c' -> ('a', 'b', 'c'); '' -> ()."""
    return tuple(part.strip() for part in value.split(",") if part.strip())
