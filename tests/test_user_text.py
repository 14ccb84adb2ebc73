"""What a user reads names the paper's equations, figures and theorems, never the project's
internal labels: the README, the notebooks (their markdown and comments), docs/*.md, the text of
report.md and every ``--help`` of the command line are checked for the banned labels below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Labels that mean nothing outside the project (its notes on the paper and their numbering).
#: Anywhere in the checked text:
BANNED = [
    (re.compile(r"\bdigest\b", re.IGNORECASE), "'digest' (cite the paper: equation, figure, theorem)"),
    (re.compile(r"\(d\d+\)"), "a '(d1)'-style label"),
    (re.compile(r"\bclaims? \d+\b", re.IGNORECASE), "a numbered 'claim' of the project's notes"),
]
#: In prose only (markdown, comments, help text; code may name a variable c1):
BANNED_PROSE = [
    (re.compile(r"\bc\d+\b"), "a 'c1'-style label"),
    (re.compile(r"\bhelper\b", re.IGNORECASE), "'helper' (say what it is)"),
]


def _problems(text: str, where: str, prose: bool = True) -> list[str]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        for pat, why in BANNED + (BANNED_PROSE if prose else []):
            if pat.search(line):
                out.append(f"{where}:{i}: {why}: {line.strip()[:100]}")
    return out


def _all_problems(text: str, prose: str, where: str) -> list[str]:
    """Prose checks on ``prose``, the anywhere-checks on the whole ``text``; one line each."""
    return sorted(set(_problems(prose, where) + _problems(text, where, prose=False)))


def _markdown_prose(text: str) -> str:
    """The Markdown without its fenced code blocks (code lines become empty, keeping line
    numbers)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def _notebook_prose(text: str) -> str:
    """Markdown cells and comments of a jupytext percent script (code lines become empty)."""
    return "\n".join(line if line.lstrip().startswith("#") else "" for line in text.splitlines())


MARKDOWN = [ROOT / "README.md", ROOT / "notebooks" / "README.md",
            *sorted((ROOT / "docs").glob("**/*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_markdown_has_no_internal_labels(path):
    text = path.read_text()  # code blocks: only the anywhere-checks
    bad = _all_problems(text, _markdown_prose(text), str(path.relative_to(ROOT)))
    assert not bad, "\n".join(bad)


#: Notebooks maintained apart whose labels are still being replaced (an expected failure: it
#: passes, non-strictly, once they are clean).
PENDING: dict[str, str] = {}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(
    reason=PENDING[p.stem], strict=False)) if p.stem in PENDING else p for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_have_no_internal_labels(path):
    text = path.read_text()
    bad = _all_problems(text, _notebook_prose(text), path.name)
    assert not bad, "\n".join(bad)


def _help_texts() -> dict[str, str]:
    import argparse

    from composition_jax.cli import build_parser

    parser = build_parser()
    texts = {"composition-jax --help": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[f"composition-jax {name} --help"] = sub.format_help()
    return texts


def test_cli_help_has_no_internal_labels_and_shows_defaults():
    texts = _help_texts()
    assert set(texts) >= {"composition-jax --help", "composition-jax reproduce --help",
                          "composition-jax bench --help", "composition-jax demo --help"}
    bad = [p for where, t in texts.items() for p in _problems(t, where)]
    assert not bad, "\n".join(bad)
    rep = " ".join(texts["composition-jax reproduce --help"].split())
    assert "(default: reproduce_out)" in rep and "(default: quick)" in rep
    assert "default: all" in rep  # --only: stated in words (its default is None)
    assert "(default: bench_out)" in " ".join(texts["composition-jax bench --help"].split())


def test_report_text_has_no_internal_labels(tmp_path):
    """report.md's own text (headline, decision rule, figure guide, learned-experiment notes,
    tables) for results of every kind of status, with and without figures."""
    from composition_jax import report
    from composition_jax.zoo import Config
    from composition_jax.zoo._common import ScenarioResult

    def res(name, expected, observed, metrics):
        return ScenarioResult(name, f"title of {name}", expected, observed, metrics,
                              ["a reason"], {})

    sam = {"euler_maruyama": {"projective_passed": True, "material_rejections": 0,
                              "mean_on_S": 0.99, "worst_effects": {"max_ks_D": 0.01}}}
    results = [
        res("a", "success", "success", {"factorized_conditionals": {"holds": True},
                                        "heuristic": {"max_abs_offdiag": 0.0},
                                        "samplers": sam}),
        res("b", "failure", "inconclusive", {"samplers": sam}),
        res("c", "failure", "success", {"per_size": {"1": {"euler_maruyama": {
            "frac_exact_count": 1.0, "mean_on_S": 1.0}}}}),
    ]
    cfg = Config.for_mode("minimal")
    env = report.environment()
    for learned in ("on", "off", "skipped"):
        for figures in (True, False):
            md = report._markdown(results, cfg, env, {"a": ["a_heatmap.png"]},
                                  "composition_gap.png" if figures else None, 1.0, learned,
                                  figures)
            bad = _problems(md, f"report.md (learned={learned}, figures={figures})")
            assert not bad, "\n".join(bad)
    assert "## Reading the figures" in report._markdown(results, cfg, env, {}, None, 1.0)


def test_the_checks_catch_labels():
    """The patterns find the labels they are meant to find (and not ordinary words)."""
    assert _problems("the digest's N(2.50, .110)", "x")
    assert _problems("see (d1) and claim 22", "x")
    assert _problems("as c1 says", "x") and not _problems("x = c1 + c2", "x", prose=False)
    assert not _problems("Figure 12, eq. (17), Theorem 5.3, Definition 4.1, cd1, abc1", "x")
