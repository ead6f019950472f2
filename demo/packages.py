"""Builds the demo's two packages: a .zip (pushed) and a .nupkg (pulled from a mirror)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

NUSPEC = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata><id>OctoPetShop.Db</id><version>1.0.0</version><authors>demo</authors>
  <description>Database migrations</description></metadata>
</package>
"""
MIGRATE = """echo "migrating with $ConnectionString (password $DbPassword)"
echo "3 migrations applied"
"""


def main(out: Path) -> None:
    """Write OctoPetShop.Web.1.0.0.zip and OctoPetShop.Db.1.0.0.nupkg into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "OctoPetShop.Web.1.0.0.zip", "w", zipfile.ZIP_DEFLATED) as web:
        web.writestr("readme.txt", "OctoPetShop.Web 1.0.0: the pet shop's web front end\n")
        web.writestr("wwwroot/index.html", "<h1>OctoPetShop</h1>\n")
    with zipfile.ZipFile(out / "OctoPetShop.Db.1.0.0.nupkg", "w", zipfile.ZIP_DEFLATED) as db:
        db.writestr("OctoPetShop.Db.nuspec", NUSPEC)
        db.writestr("migrate.sh", MIGRATE)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
