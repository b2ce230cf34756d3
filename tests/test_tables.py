"""reports/tables.py (`python report.py table`): the challenge table from hand-written results.jsonl files
(exact Markdown and CSV)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

from reports import tables as results
from datasets import TABLE_ORDER
from methods import method_label
import report

ROOT = Path(__file__).resolve().parents[1]


def row(dataset, robust, clean, method, run, eps=1, **kw):
    r = {"dataset": dataset, "n": 100, "clean_acc": clean, "robust_acc": robust, "seconds": 1.0, "attack": "pgd",
         "norm": "l_inf", "eps": eps, "steps": 100, "step_size": 1.0, "precision": "fp32", "n_samples": 0, "seed": 0,
         "checkpoint": "last.pt@step10", "method": method, "run": run, "classes": 10}
    r.update(kw)
    return r


def table_main(argv):
    """As `python report.py table` calls it: the paper's order of datasets, labels of rows that carry none
    (these hand-written rows have the format of results written before rows carried labels)."""
    return report.main(["table", *argv])


def build_tables(runs):
    return results.build_tables(results.load_runs(runs), TABLE_ORDER, method_label)


def write_run(folder: Path, rows, tail: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return folder


EXPECTED = """\
### PGD-100, ε = 1/255, step 1/255, l_inf, fp32

| Method | tinyImageNet Robust | tinyImageNet Clean | cifar10 Robust | cifar10 Clean | STL10 Robust | STL10 Clean | Robust | Clean | Average |
|---|---|---|---|---|---|---|---|---|---|
| TeCoA | – | – | 30.00 | 50.00 | 40.00 | 70.00 | 35.00* | 60.00* | 47.50* |
| TGA-ZSR | 20.00 | 40.00 | 35.50 | 55.50 | 45.00 | 75.00 | 33.50 | 56.83 | 45.17 |

\\* mean over the datasets that run has, not all 3.

### PGD-100, ε = 4/255, step 1/255, l_inf, fp32

| Method | cifar10 Robust | cifar10 Clean | Robust | Clean | Average |
|---|---|---|---|---|---|
| TeCoA | 10.00 | 50.00 | 10.00 | 50.00 | 30.00 |
"""


def two_runs(tmp_path):
    a = write_run(tmp_path / "tecoa_run", [
        row("STL10", 40, 70, "tecoa", "tecoa_run"),
        row("cifar10", 99, 99, "tecoa", "tecoa_run"),       # replaced by the later line below
        row("cifar10", 30, 50, "tecoa", "tecoa_run"),
        row("cifar10", 10, 50, "tecoa", "tecoa_run", eps=4),
    ], tail='{"dataset": "STL10", "n": 10')                # a line cut by a kill is ignored
    b = write_run(tmp_path / "tga_run", [
        row("cifar10", 35.5, 55.5, "tga_zsr", "tga_run"),
        row("tinyImageNet", 20, 40, "tga_zsr", "tga_run"),
        row("STL10", 45, 75, "tga_zsr", "tga_run"),
    ])
    return a, b


def test_markdown_exact(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    assert table_main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out == EXPECTED + f"CSV written to {a / 'table.csv'}\n"


def test_csv(tmp_path):
    a, b = two_runs(tmp_path)
    out = tmp_path / "t.csv"
    assert table_main([str(a), str(b / "results.jsonl"), "--out", str(out)]) == 0
    with open(out) as f:
        recs = list(csv.DictReader(f))
    assert [(r["method"], r["eps"]) for r in recs] == [("tecoa", "1"), ("tga_zsr", "1"), ("tecoa", "4")]
    first = recs[0]
    assert first["label"] == "TeCoA" and first["run"] == "tecoa_run" and first["attack"] == "pgd"
    assert first["tinyImageNet_robust"] == "" and first["cifar10_robust"] == "30.00" and first["STL10_clean"] == "70.00"
    assert (first["mean_robust"], first["mean_clean"], first["average"]) == ("35.00", "60.00", "47.50")
    assert first["complete"] == "False" and first["n_datasets"] == "2"
    assert recs[1]["average"] == "45.17" and recs[1]["complete"] == "True"
    assert list(recs[0])[:10] == ["attack", "norm", "eps", "steps", "step_size", "n_samples", "precision", "method",
                                  "label", "run"]


def test_same_method_rows_carry_the_run_name(tmp_path):
    a = write_run(tmp_path / "seed0", [row("cifar10", 30, 50, "tga_zsr", "seed0")])
    b = write_run(tmp_path / "seed1", [row("cifar10", 32, 52, "tga_zsr", "seed1")])
    tables = build_tables([str(a), str(b)])
    assert [r["label"] for r in tables[0]["rows"]] == ["TGA-ZSR (seed0)", "TGA-ZSR (seed1)"]


def test_a_rows_own_label_wins(tmp_path):
    """New rows carry the method's display label (methods.py `label`); the table prints it as is."""
    a = write_run(tmp_path / "ls", [row("cifar10", 30, 50, "tecoa_ls", "ls", label="TeCoA-LS (ε 0.1)")])
    b = write_run(tmp_path / "t", [row("cifar10", 30, 50, "tecoa", "t")])
    labels = [r["label"] for r in build_tables([str(a), str(b)])[0]["rows"]]
    assert labels == ["TeCoA-LS (ε 0.1)", "TeCoA"]
    assert [r["label"] for r in results.build_tables(results.load_runs([str(b)]))[0]["rows"]] == ["tecoa"]


def test_table_through_report_py_and_without_torch(tmp_path):
    a, b = two_runs(tmp_path)
    out = subprocess.run([sys.executable, "report.py", "table", str(a), str(b)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(EXPECTED)
    # the table builder itself never imports torch (it must start instantly)
    check = "import sys; from reports import tables; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT).returncode == 0


def test_no_results_says_what_to_do(tmp_path):
    import pytest
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="--eval_only --resume"):
        table_main([str(tmp_path / "empty")])
