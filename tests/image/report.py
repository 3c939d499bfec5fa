"""Results of the image's test suite: each check's outcome, the table, the JUnit XML."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

TIERS = ("static", "gpu", "rl")
PASS, FAIL, SKIP = "pass", "FAIL", "skip"


@dataclass
class Result:
    tier: str
    name: str
    component: str
    status: str  # pass | FAIL | skip
    detail: str = ""  # what was found; for a failure, what is wrong
    pin: str = ""  # the version or pin involved
    todo: str = ""  # for a failure: what to do
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)


class Report:
    """Collects results as the checks run and prints each as it comes."""

    def __init__(self, out=print):
        self.results: list[Result] = []
        self.out = out

    def add(self, r: Result) -> Result:
        self.results.append(r)
        line = f"[{r.tier}] {r.status:<4} {r.name}: {r.detail}"
        if r.status == FAIL:
            line += f"\n       component {r.component}" + (f", pin {r.pin}" if r.pin else "")
            if r.todo:
                line += f"\n       to do: {r.todo}"
        self.out(line)
        return r

    def run(self, tier: str, name: str, component: str, fn, *, pin: str = "", todo: str = "") -> Result:
        """Run one check function (returning a Result or (status, detail[, figures])); an exception
        is a failure that names the component and the exception."""
        t0 = time.monotonic()
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - a check that raises has failed; say how
            tb = traceback.format_exc(limit=-3).strip().splitlines()
            got = Result(tier, name, component, FAIL, f"{type(e).__name__}: {e} ({tb[-3].strip() if len(tb) > 2 else ''})",
                         pin, todo)
        if not isinstance(got, Result):
            status, detail, *rest = got
            got = Result(tier, name, component, status, detail, pin, todo if status == FAIL else "",
                         figures=rest[0] if rest else {})
        got.seconds = round(time.monotonic() - t0, 1)
        return self.add(got)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == FAIL]


def table(results: list[Result], skipped_tiers: dict[str, str]) -> str:
    rows = [("tier", "check", "component", "pin", "result", "detail")]
    for r in results:
        detail = r.detail if r.status != FAIL else f"{r.detail} -- to do: {r.todo}" if r.todo else r.detail
        rows.append((r.tier, r.name, r.component, r.pin, r.status, detail.replace("|", "/").replace("\n", " ")))
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    out += ["| " + " | ".join(c or "" for c in row) + " |" for row in rows[1:]]
    n = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    out.append("")
    out.append(f"{len(results)} checks: {n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped")
    for tier, why in skipped_tiers.items():
        out.append(f"tier {tier} NOT RUN: {why}")
    return "\n".join(out) + "\n"


def junit(results: list[Result], skipped_tiers: dict[str, str]) -> bytes:
    root = ET.Element("testsuites", name="gemma4-stack image-test")
    for tier in TIERS:
        rs = [r for r in results if r.tier == tier]
        suite = ET.SubElement(root, "testsuite", name=f"image-test.{tier}", tests=str(max(len(rs), 1 if tier in skipped_tiers else 0)),
                              failures=str(sum(r.status == FAIL for r in rs)),
                              skipped=str(sum(r.status == SKIP for r in rs) + (tier in skipped_tiers and not rs)),
                              time=f"{sum(r.seconds for r in rs):.1f}")
        if tier in skipped_tiers and not rs:
            case = ET.SubElement(suite, "testcase", classname=f"image-test.{tier}", name="(tier)")
            ET.SubElement(case, "skipped", message=skipped_tiers[tier])
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"image-test.{tier}.{r.component}", name=r.name,
                                 time=f"{r.seconds:.1f}")
            msg = r.detail + (f" (pin {r.pin})" if r.pin else "")
            if r.status == FAIL:
                ET.SubElement(case, "failure", message=msg).text = f"{msg}\nto do: {r.todo}" if r.todo else msg
            elif r.status == SKIP:
                ET.SubElement(case, "skipped", message=msg)
            if r.figures:
                ET.SubElement(case, "system-out").text = json.dumps(r.figures)
    ET.indent(root) if hasattr(ET, "indent") else None
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write(out_dir: Path, results: list[Result], skipped_tiers: dict[str, str]) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(results, skipped_tiers)
    (out_dir / "results.md").write_text(text)
    (out_dir / "junit.xml").write_bytes(junit(results, skipped_tiers))
    with open(out_dir / "results.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
    return text


