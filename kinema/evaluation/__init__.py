"""Evaluation: the shapes-world judge, prompt sets and scores."""

from .judge import JudgeResult, eval_prompts, format_table, judge_clip, score

__all__ = ["JudgeResult", "eval_prompts", "format_table", "judge_clip", "score"]
