"""report: JSON and HTML reports, written in one place that every capability extends."""

# Capabilities register their HTML sections on import.
from edgetune.report import bench as _bench  # noqa: F401
from edgetune.report import cascade as _cascade  # noqa: F401
from edgetune.report import optimize as _optimize  # noqa: F401
from edgetune.report import silicon as _silicon  # noqa: F401
from edgetune.report.html import SECTIONS, render_html, write_html
from edgetune.report.schema import SCHEMA, load_report, new_report, write_json

__all__ = ["SCHEMA", "SECTIONS", "load_report", "new_report", "render_html", "write_html", "write_json"]
