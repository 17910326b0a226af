"""Prompt templates for the LLM debate, shipped as package data (`prompts/*.md`).

A template is `string.Template` text (`$name` placeholders, `$$` for a literal dollar sign) with
two sections marked `<!-- system -->` and `<!-- user -->`; `agents.llm_debate` fills and splits it.
"""
from __future__ import annotations

from importlib import resources

PROMPT_NAMES = ("bull", "bear", "judge")


def load_prompt(name: str) -> str:
    """The raw template text of prompt `name` (one of PROMPT_NAMES)."""
    if name not in PROMPT_NAMES:
        raise ValueError(f"unknown prompt {name!r}; expected one of {PROMPT_NAMES}")
    return resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
