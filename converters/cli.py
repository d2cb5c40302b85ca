"""`edge-convert`: bring a trained model to the appliance.

Today: `inspect` verifies a bundle and prints its manifest. `build`, `validate`, `sign` and `engine` arrive with
the conversion issue.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_app.bundle import load_bundle
from edge_app.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="verify a model bundle (every file's hash) and print its manifest")
    p.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
    except UserError as exc:
        print(f"edge-convert: {exc}", file=sys.stderr)
        return 2
    out = {
        "bundle": str(bundle.path),
        "sha256": bundle.sha256,
        "manifest": bundle.manifest.model_dump(mode="json"),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
