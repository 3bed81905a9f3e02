"""`emoflow models list|show|promote|rollback`: the registry from the command line.

The main CLI calls ``add_cli(subparsers)``; the parsed arguments carry ``func`` (the
handler, returning an exit code). ``main(argv)`` runs the group on its own.
"""

from __future__ import annotations

import argparse
import json
import sys

from emoflow import config
from emoflow.storage import StoreError

from .core import DEFAULT_ALIAS, Registry, RegistryError


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` command group to an argparse subparsers object."""
    p = subparsers.add_parser("models", help="model registry: list, show, promote, rollback; presets")
    p.add_argument("--store", default=None, help="artifact store URI (default: $EMOFLOW_STORE or the local store)")
    p.add_argument("--root", default="registry", help="registry folder inside the store (default: registry)")
    sub = p.add_subparsers(dest="models_cmd", metavar="{list,show,promote,rollback,presets}")
    sub.required = True

    s = sub.add_parser("list", help="models with their versions and aliases")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("show", help="details of a model (name) or a version (name@v3, name@production)")
    s.add_argument("ref")

    s = sub.add_parser("promote", help="point an alias (default production) at a version")
    s.add_argument("name")
    s.add_argument("version")
    s.add_argument("--alias", default=DEFAULT_ALIAS)
    s.add_argument("--no-verify", action="store_true", help="skip re-hashing the version's files")

    s = sub.add_parser("rollback", help="point an alias back at its previous version")
    s.add_argument("name")
    s.add_argument("--alias", default=DEFAULT_ALIAS)

    sub.add_parser("presets", help="architecture presets with their parameter counts (built offline)")

    p.set_defaults(func=handle)
    return p


def handle(args: argparse.Namespace, out=None) -> int:
    """Run one ``models`` subcommand; prints to ``out`` (stdout) and returns an exit code."""
    out = out or sys.stdout
    try:
        reg = Registry(args.store or config.store_uri(), root=args.root)
        cmd = args.models_cmd
        if cmd == "presets":
            from emoflow.models import format_presets

            print(format_presets(), file=out)
            return 0
        if cmd == "list":
            rows = []
            for name in reg.list_models():
                rows.append(
                    {"model": name, "versions": reg.list_versions(name), "aliases": reg.list_aliases(name)}
                )
            if args.json:
                print(json.dumps(rows, indent=2), file=out)
            elif not rows:
                print(f"no models in {reg.store.uri(reg.root)}", file=out)
            else:
                for r in rows:
                    aliases = " ".join(f"{a}={v}" for a, v in sorted(r["aliases"].items())) or "-"
                    print(f"{r['model']}\tversions: {', '.join(r['versions'])}\taliases: {aliases}", file=out)
        elif cmd == "show":
            print(json.dumps(reg.show(args.ref), indent=2, sort_keys=True), file=out)
        elif cmd == "promote":
            before = reg.get_alias(args.name, args.alias)
            reg.promote(args.name, args.version, alias=args.alias, verify=not args.no_verify)
            print(f"{args.name}@{args.alias}: {before or '(unset)'} -> {args.version}", file=out)
        elif cmd == "rollback":
            before = reg.get_alias(args.name, args.alias)
            target = reg.rollback(args.name, alias=args.alias)
            print(f"{args.name}@{args.alias}: {before} -> {target} (rolled back)", file=out)
        else:  # argparse enforces the choices
            raise RegistryError(f"unknown models command {cmd!r}")
    except (RegistryError, StoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m emoflow.registry.cli models list``."""
    parser = argparse.ArgumentParser(prog="emoflow")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
