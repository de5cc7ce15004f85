"""The example loop: keep examples accepted in operation, flag personal data, export tuning sets.

:mod:`tunelens.examples.store` holds the SQLite store, :mod:`tunelens.examples.pii`
the personal-data flags. The command line is ``tunelens examples add|list|export``.
"""

from tunelens.examples.pii import pii_flags
from tunelens.examples.store import (
    DEFAULT_DB,
    ExampleFile,
    ExampleStore,
    NewExample,
    StoredExample,
    read_example_file,
    read_example_rows,
)

__all__ = [
    "DEFAULT_DB",
    "ExampleFile",
    "ExampleStore",
    "NewExample",
    "StoredExample",
    "pii_flags",
    "read_example_file",
    "read_example_rows",
]
