"""Build steps that pyproject.toml cannot express.

1. The mypyc build of the compiled core (skipped with VALKA_PURE=1: a pure wheel).
2. Regenerating the valka.v1 stubs from proto/ into the build dir, so that a wheel always
   matches the .proto files even when the committed stubs are stale.
3. Copying the SQL migrations from schema/ into the package as valka/schema/, where the
   installed server finds them with importlib.resources.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

import gen_proto  # noqa: E402  (lives in tools/, not an installed module)

# Modules compiled with mypyc. They must stay typed and pure (see DESIGN.md).
COMPILED = [
    "valka/core/status.py",
    "valka/core/ids.py",
]
# Written by other parts of the project; compiled when present.
COMPILED_IF_PRESENT = [
    "valka/matching/tree.py",
    "valka/matching/matcher.py",
    "valka/dispatcher/credits.py",
]

SCHEMA_INIT = '"""SQL migrations, copied here from schema/ at build time."""\n'


def compiled_modules() -> list[str]:
    present = [path for path in COMPILED_IF_PRESENT if (ROOT / path).is_file()]
    return COMPILED + present


def ext_modules() -> list[object]:
    if os.environ.get("VALKA_PURE", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    # mypyc resolves these paths from the working directory.
    os.chdir(ROOT)
    return list(mypycify(compiled_modules(), opt_level="3", group_name="valka"))


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.dry_run:
            return
        build_root = Path(self.build_lib)
        gen_proto.generate(build_root)

        schema_out = build_root / "valka" / "schema"
        if schema_out.exists():
            shutil.rmtree(schema_out)
        schema_out.mkdir(parents=True)
        for sql in sorted((ROOT / "schema").glob("*.sql")):
            shutil.copyfile(sql, schema_out / sql.name)
        (schema_out / "__init__.py").write_text(SCHEMA_INIT)


setup(ext_modules=ext_modules(), cmdclass={"build_py": BuildPy})
