"""Run every symbolic proof; exit status 1 if any identity fails."""

from __future__ import annotations

import importlib
import sys
import time

from . import MODULES


def main() -> int:
    failed = []
    for label, name in MODULES.items():
        t0 = time.perf_counter()
        mod = importlib.import_module(f"proofs_check.{name}")
        rc = mod.main()
        print(f"   ({label}, {time.perf_counter() - t0:.1f} s)\n")
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"proofs_check: {len(failed)} module(s) failed: {', '.join(failed)}")
        return 1
    print(f"proofs_check: all {len(MODULES)} modules proved their identities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
