"""The tasks the model performs. One enum shared by every part of model/."""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    UNDERSTAND = "understand"
    TEXT_TO_AUDIO = "text_to_audio"
    TEXT_TO_MUSIC = "text_to_music"
    TTS = "tts"
    VIDEO_TO_AUDIO = "video_to_audio"
    VIDEO_TO_MUSIC = "video_to_music"
    EDIT_ADD = "edit_add"
    EDIT_REMOVE = "edit_remove"
    EDIT_EXTRACT = "edit_extract"
    EDIT_STYLE_TRANSFER = "edit_style_transfer"
    VOICE_CONVERSION = "voice_conversion"

    @classmethod
    def parse(cls, value: str) -> Task:
        """Look a task up by name (surrounding whitespace ignored); unknown names list the known ones."""
        try:
            return cls(value.strip())
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown task {value!r}; known tasks: {known}") from None

    @property
    def is_edit(self) -> bool:
        return self in EDIT_TASKS

    @property
    def generates_audio(self) -> bool:
        return self is not Task.UNDERSTAND


EDIT_TASKS = frozenset({Task.EDIT_ADD, Task.EDIT_REMOVE, Task.EDIT_EXTRACT, Task.EDIT_STYLE_TRANSFER})
VIDEO_TASKS = frozenset({Task.VIDEO_TO_AUDIO, Task.VIDEO_TO_MUSIC})
