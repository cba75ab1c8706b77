"""`make promote VERSION=n [REASON="..."]`: move the champion alias to version n by hand (a roll-back,
or a promotion the gate refused), recording who did it and why on the version."""

import argparse
import getpass
import os
import subprocess
import sys

from pipelines.settings import Settings


def who() -> str:
    """The person promoting: git's user.name when set, else the login name."""
    try:
        name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, check=False).stdout
    except OSError:
        name = ""
    return name.strip() or os.environ.get("USER") or getpass.getuser()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", required=True, help="registered model version to make champion")
    parser.add_argument("--reason", default="", help="why (recorded on the version)")
    parser.add_argument("--by", default=None, help="who (default: git user.name or the login name)")
    args = parser.parse_args(argv)

    from mlflow.exceptions import MlflowException

    from pipelines.definitions import build_resources

    settings = Settings.from_env()
    registry = build_resources(settings)["mlflow_registry"]
    try:
        registry.client().get_model_version(settings.model_name, args.version)
    except MlflowException:
        print(f"No version {args.version} of model {settings.model_name!r} in {settings.mlflow_tracking_uri}.")
        return 1
    reason = args.reason or "manual promotion"
    previous = registry.promote(args.version, by=args.by or who(), reason=reason)
    print(f"champion: {settings.model_name} version {previous or '(none)'} -> {args.version} ({reason})")
    print(f"in the MLflow UI: {registry.version_url(args.version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
