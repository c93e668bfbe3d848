"""How `greenloop demo` reports: estimated costs said so, failures cut at words, the kept directory, the deadline."""

from __future__ import annotations

import io

import pytest

from fixtures.demo import DemoResult, ProjectResult, _first_clause, render_result
from reconciler.cli import main


def _result(model: str, *, kept: str | None = None) -> DemoResult:
    project = ProjectResult(
        name="etl",
        repo="acme/etl",
        autonomy="propose",
        expected="pr_open",
        failure=_first_clause(
            "The transform step crashes on an unexpected nullable column in the upstream schema dump"
        ),
        state="pr_open",
        decision="start",
        input_tokens=1200,
        output_tokens=300,
        cost_usd=0.148,
    )
    return DemoResult(model=model, projects=[project], settled=True, kept_dir=kept)


def test_a_scripted_models_cost_is_labelled_an_estimate() -> None:
    out = io.StringIO()
    render_result(_result("scripted model"), out)
    text = out.getvalue()
    assert "| cost (estimated) |" in text and "$0.1480" in text
    assert "estimated at list prices; nothing was billed" in text
    assert _result("scripted model").to_json()["cost_is_estimate"] is True
    real = io.StringIO()
    render_result(_result("real model claude-sonnet-4-6"), real)
    assert "| cost |" in real.getvalue() and "estimated" not in real.getvalue()


@pytest.mark.parametrize("width", [20, 35, 50, 90])
def test_the_failure_column_is_cut_between_words(width: int) -> None:
    text = "The transform step crashes on an unexpected nullable column in the upstream schema dump. More; detail"
    short = _first_clause(text, width=width)
    assert len(short) <= width
    words = set(text.replace(".", " ").split())
    assert all(w in words for w in short.removesuffix(" …").split())  # whole words only
    assert ";" not in short and "More" not in short


def test_keep_prints_the_kept_directory_last() -> None:
    out = io.StringIO()
    render_result(_result("scripted model", kept="/tmp/greenloop-demo-x1"), out)
    assert out.getvalue().rstrip().splitlines()[-1] == "kept: /tmp/greenloop-demo-x1 (forge, store and workspaces)"
    assert _result("scripted model", kept="/tmp/k").to_json()["kept_dir"] == "/tmp/k"
    plain = io.StringIO()
    render_result(_result("scripted model"), plain)
    assert "kept:" not in plain.getvalue()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_a_deadline_that_is_not_a_positive_number_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--deadline", value])
    assert info.value.code == 2
    assert "--deadline" in capsys.readouterr().err
