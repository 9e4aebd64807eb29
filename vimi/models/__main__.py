"""``python -m vimi.models [NAME ...]``: parameter counts of the named backbone sizes."""
import sys

from vimi.models import parameter_table

print(parameter_table(sys.argv[1:] or None))
