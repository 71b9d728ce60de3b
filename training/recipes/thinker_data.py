"""The thinker recipe's questions and answers (`training.recipes.thinker`): the question kinds and
their phrasings, the templated answers (classes, rough onsets, backgrounds, the refusal for what the
scenes cannot tell), and the text-only reasoning-rewrite examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.recipes.small import CLASSES

CANNOT_TELL = "I cannot tell that from this audio."

# Per class: the DiT's training text (`prompt_of`), and the noun phrase answers use.
CLASS_TEXT = {c: c.replace("_", " ") for c in CLASSES}
CLASS_PHRASE = {
    "tone": "a tone",
    "chord": "a chord",
    "clicks": "clicks",
    "noise_burst": "a noise burst",
    "siren": "a siren",
}
BACKGROUND_PHRASE = {"pink": "pink noise", "brown": "brown noise", "hum": "a hum", "crackle": "crackle"}

HEAR_QUESTIONS = (
    "What do you hear?",
    "What do you hear, and when?",
    "What sound is in this clip?",
    "Which sounds are in this recording?",
    "What can you hear in this audio?",
    "Describe what you hear.",
    "What is in this clip?",
    "Listen: what happens in this recording?",
)
DESCRIBE_QUESTIONS = (
    "Describe the main sound in a few words.",
    "Name the main sound in a few words.",
    "Describe the main sound in this clip in a few words.",
    "What is the main sound? Answer in a few words.",
)
IS_THERE_QUESTIONS = ("Is there {np} in this clip?", "Do you hear {np}?", "Does this recording contain {np}?")
WHEN_QUESTIONS = ("When does the {name} start?", "At what time do you hear the {name}?", "When do you hear the {name}?")
BACKGROUND_QUESTIONS = (
    "What is the background?",
    "What is the background sound?",
    "What is behind the main sound?",
    "Over which background is this?",
)
OUT_OF_SCOPE_QUESTIONS = (
    "What are they saying?",
    "Transcribe the speech in this clip.",
    "What genre is this music?",
    "How many people are in the room?",
    "What is happening in the video?",
    "Who is speaking?",
    "What language is spoken here?",
    "Which instrument plays the melody?",
    "Is this recorded indoors or outdoors?",
    "What mood does this music have?",
    "How many dogs are barking?",
    "What brand is the car engine?",
    "What is the tempo in beats per minute?",
    "Is the speaker a man or a woman?",
    "Where was this recorded?",
    "What year is this recording from?",
)
# Never trained on: the held-out check of out-of-scope answers.
HELD_OUT_OUT_OF_SCOPE = ("What song is this?", "How old is the speaker?", "What is the weather like?")
# Requests a reasoning rewrite maps to a class (text only: the answer becomes a generation prompt).
REQUEST_SYNONYMS = {
    "siren": ("siren", "a siren", "an ambulance siren", "the sound an ambulance makes", "a police siren"),
    "tone": ("tone", "a pure tone", "a beep", "a sine wave", "a test tone"),
    "chord": ("chord", "a chord", "a piano chord", "three notes at once", "a major chord"),
    "clicks": ("clicks", "clicking", "a clock ticking", "a series of clicks", "tapping"),
    "noise_burst": ("noise burst", "a burst of noise", "a short hiss", "a whoosh", "a static burst"),
}
# How often each kind of example is drawn; "reasoning" is text only (its own micro-batch).
QUESTION_KINDS = {
    "hear": 0.30,
    "describe": 0.16,
    "is_there": 0.20,
    "when": 0.12,
    "background": 0.10,
    "out_of_scope": 0.12,
}


# --------------------------------------------------------------------------- questions and answers


@dataclass(frozen=True)
class Scene:
    """One scene's truth: its event class (None: background only), onset and background kind."""

    label: str | None
    onset_s: float
    background: str


def seconds_phrase(onset_s: float) -> str:
    t = round(onset_s)
    return f"around {t} second" + ("" if t == 1 else "s")


def background_kind(rel_path: str) -> str:
    """`pink_00.wav` -> `pink` (the kinds of `examples/sounds/make_sounds.py`)."""
    kind = Path(rel_path).name.split("_")[0]
    if kind not in BACKGROUND_PHRASE:
        raise ValueError(f"background file {rel_path!r} is not one of the kinds {sorted(BACKGROUND_PHRASE)}")
    return kind


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def answer_for(kind: str, scene: Scene, asked: str | None = None) -> str:
    """The templated answer of question `kind` about `scene` (`asked`: the class a yes/no or when
    question names)."""
    bg = BACKGROUND_PHRASE[scene.background]
    at = seconds_phrase(scene.onset_s)
    if kind == "hear":
        if scene.label is None:
            return f"Only {bg}, no other sound."
        return f"{_cap(CLASS_PHRASE[scene.label])} at {at}, over {bg}."
    if kind == "describe":
        return CLASS_TEXT[scene.label] if scene.label is not None else bg
    if kind == "background":
        return f"{_cap(bg)}."
    if kind == "out_of_scope":
        return CANNOT_TELL
    if asked is None:
        raise ValueError(f"question kind {kind!r} needs the class it asks about")
    if kind == "is_there":
        return f"Yes, {CLASS_PHRASE[asked]} at {at}." if asked == scene.label else f"No, I hear no {CLASS_TEXT[asked]}."
    if kind == "when":
        return f"{_cap(at)}." if asked == scene.label else f"I hear no {CLASS_TEXT[asked]}."
    raise ValueError(f"unknown question kind {kind!r}; known: {sorted(QUESTION_KINDS)}")


def draw_question(kind: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    """(system prompt, question, answer) of one example of `kind` about `scene`."""
    from model.prompts import ASR_INSTRUCTION, SYS_ASR, SYS_UNDERSTANDING

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    if kind in ("is_there", "when"):
        # Half the time ask about the class that is there, else about another one.
        present = scene.label is not None and rng.random() < 0.5
        asked = scene.label if present and scene.label is not None else pick([c for c in CLASSES if c != scene.label])
        template = pick(IS_THERE_QUESTIONS if kind == "is_there" else WHEN_QUESTIONS)
        question = template.format(np=CLASS_PHRASE[asked], name=CLASS_TEXT[asked])
        return SYS_UNDERSTANDING, question, answer_for(kind, scene, asked)
    if kind == "out_of_scope" and rng.random() < 0.15:
        return SYS_ASR, ASR_INSTRUCTION, CANNOT_TELL
    questions = {
        "hear": HEAR_QUESTIONS,
        "describe": DESCRIBE_QUESTIONS,
        "background": BACKGROUND_QUESTIONS,
        "out_of_scope": OUT_OF_SCOPE_QUESTIONS,
    }
    return SYS_UNDERSTANDING, pick(questions[kind]), answer_for(kind, scene)


def reasoning_examples() -> list[tuple[str, str]]:
    """(question, answer) of every text-only reasoning rewrite the recipe trains: each request naming
    one of the classes, for text-to-audio and the edits, answered by the class's DiT text."""
    from model.prompts import reasoning_question
    from model.tasks import Task

    tasks = (Task.TEXT_TO_AUDIO, Task.EDIT_ADD, Task.EDIT_REMOVE, Task.EDIT_EXTRACT)
    return [
        (reasoning_question(task, request), CLASS_TEXT[c])
        for c, requests in REQUEST_SYNONYMS.items()
        for request in requests
        for task in tasks
    ]
