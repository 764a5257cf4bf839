"""The locked dependencies: write requirements/lock.txt, and audit it with pip-audit.

    python requirements/deps.py lock            # add what pyproject's extras need to the lock
    python requirements/deps.py lock --upgrade  # resolve everything afresh (newest versions)
    python requirements/deps.py audit           # pip-audit over the lock, with a summary
    python requirements/deps.py audit --strict  # ... and fail if a package could not be audited

`lock` asks pip to resolve `.[dev,dask,plots,redis,ray]` (a dry run that installs
nothing), within the current lock unless `--upgrade` (so a new dependency does
not move every other pin), and writes every package of the resolution, pinned, to the lock; the
Makefile installs with the lock as constraints. `audit` runs pip-audit on the
lock (its default vulnerability service, PyPI) and says how many packages it
could audit: a service that cannot be reached audits nothing, and "no known
vulnerabilities" over nothing is not a pass, so the count is always printed.
A known vulnerability fails the audit; a package that could not be audited,
or a pip-audit that could not run, fails it only with --strict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
EXTRAS = ".[dev,dask,plots,redis,ray]"
HEADER = """\
# The project's dependencies, pinned: Python 3.11, Linux x86_64.
# Written by `make lock` (python requirements/deps.py lock) from pyproject.toml's
# dependencies and the extras dev, dask, plots, redis and ray; installed with it as
# constraints (`pip install -c requirements/lock.txt -e '.[dev,dask,plots,redis,ray]'`);
# audited by `make audit`.
"""


def lock(upgrade: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        within = [] if upgrade or not LOCK.exists() else ["-c", str(LOCK)]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             *within, "--report", str(report), "-e", EXTRAS],
            cwd=ROOT, check=True,
        )  # fmt: skip
        resolved = json.loads(report.read_text())["install"]
    pins = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in resolved
        if item["metadata"]["name"] != "prefect-resilience"
    )
    LOCK.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in pins))
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins)} packages")
    return 0


def audit(strict: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        done = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--no-deps",
             "--disable-pip", "--progress-spinner", "off", "--format", "json",
             "--output", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        if not out.exists():  # it could not run at all, e.g. no network: nothing audited
            print(done.stdout + done.stderr, file=sys.stderr)
            print("audit: NOTHING WAS AUDITED: pip-audit gave no result (above); this is not"
                  " a pass")  # fmt: skip
            return 1 if strict else 0
        result = json.loads(out.read_text())
    packages = result["dependencies"]
    skipped = [p for p in packages if "skip_reason" in p]
    vulnerable = [p for p in packages if p.get("vulns")]
    for package in vulnerable:
        for vuln in package["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            print(f"VULNERABLE {package['name']} {package['version']}: {vuln['id']} (fixed in"
                  f" {fixed})")  # fmt: skip
    audited = len(packages) - len(skipped)
    print(
        f"audit: {audited} of {len(packages)} locked packages audited by pip-audit"
        f" (vulnerability service: PyPI), {len(vulnerable)} with known vulnerabilities"
    )
    if skipped:
        reasons = sorted({p["skip_reason"].split(":")[0] for p in skipped})
        print(f"audit: {len(skipped)} could not be audited: {'; '.join(reasons)}"
              f" (e.g. {skipped[0]['name']})")  # fmt: skip
        if not audited:
            print("audit: NOTHING WAS AUDITED: the vulnerability service did not answer for any"
                  " package; this is not a pass")  # fmt: skip
    if vulnerable:
        return 1
    return 1 if strict and skipped else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["lock"]:
        return lock(upgrade="--upgrade" in argv[1:])
    if argv[:1] == ["audit"]:
        return audit(strict="--strict" in argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
