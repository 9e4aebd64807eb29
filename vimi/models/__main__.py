"""``python -m vimi.models [NAME ...]``: parameter counts of the named backbone sizes."""
import sys

from vimi.models import parameter_table


def main(argv: list[str] | None = None) -> int:
    print(parameter_table(list(sys.argv[1:] if argv is None else argv) or None))
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi.models"))
