"""graphite-web 1.1.10 on a supported Django: what later Django releases removed, put back.

graphite-web 1.1.10 (the last release) and django-tagging 0.5.0 were written for
Django 1.11 to 3.2 and Python 3.5 to 3.9.  Django 4.0 and 5.0 removed names they use,
so on Django 5.2 LTS they fail at import, and Python 3.11 removed the two
``inspect`` functions graphite-web's function list (``/functions``) calls.
:func:`install` restores those names, each as a thin alias of what replaced it,
before Django loads graphite-web's applications; DSAT's
graphite-web settings (``dsat.carbon_conf.local_settings``) call it, so every
process that runs graphite-web with them gets it: ``python -m
dsat.tools.graphite_web``, ``django-admin`` and a WSGI server of the user's own.

Nothing here copies graphite-web's code; each item says which Django release
removed what it restores.  :func:`support_warning` reads :data:`SECURITY_SUPPORT`,
the project's table of when each Django release leaves security support.
"""

from __future__ import annotations

import collections
import datetime
import inspect
from typing import Any

#: The last month of security support of each Django feature release (the Django project's
#: published roadmap); a release is unsupported from the first day of the month after.
SECURITY_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (3, 2): (2024, 4),
    (4, 0): (2023, 4),
    (4, 1): (2023, 12),
    (4, 2): (2026, 4),
    (5, 0): (2025, 4),
    (5, 1): (2025, 12),
    (5, 2): (2028, 4),
    (6, 0): (2027, 4),
}


def support_ends(version: tuple[int, ...]) -> datetime.date | None:
    """The first day a Django release (``django.VERSION``) is without security support; None if not in the table."""
    month = SECURITY_SUPPORT.get(tuple(version[:2]))  # type: ignore[arg-type]
    if month is None:
        return None
    year, last = month
    return datetime.date(year + last // 12, last % 12 + 1, 1)


def support_warning(version: tuple[int, ...], today: datetime.date) -> str | None:
    """What to tell an operator about this Django release on this day, or None when it is supported."""
    release = ".".join(str(part) for part in version[:3])
    ends = support_ends(version)
    if ends is None:
        return (
            f"Django {release} is not in DSAT's table of security support (dsat.tools.django_compat); "
            "graphite-web is tested on the Django that dsat[graphite] pins"
        )
    if today < ends:
        return None
    return (
        f"Django {release} has been without security support since {ends:%Y-%m-%d}: flaws found since are not "
        "fixed in it; upgrade DSAT (dsat[graphite] pins its Django) and keep graphite-web behind a login"
    )


def _make_aware_localizing(make_aware: Any) -> Any:
    """``make_aware`` that lets a pytz zone place the offset (Django < 5.0 called its ``localize``)."""

    def aware(value: datetime.datetime, timezone: Any = None, is_dst: bool | None = None) -> datetime.datetime:
        localize = getattr(timezone, "localize", None)
        if localize is not None:
            return localize(value, is_dst=is_dst)
        return make_aware(value, timezone)

    aware.__doc__ = make_aware.__doc__
    aware.__wrapped__ = make_aware  # type: ignore[attr-defined]
    return aware


def _getargspec(func: Any) -> Any:
    """``inspect.getargspec`` (removed in Python 3.11): the first four fields of ``getfullargspec``."""
    spec = inspect.getfullargspec(func)
    return _ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)


def _formatargspec(
    args: list[str], varargs: str | None = None, varkw: str | None = None, defaults: tuple[Any, ...] | None = None
) -> str:
    """``inspect.formatargspec`` (removed in Python 3.11) of graphite-web's four fields: ``(a, b=1, *c, **d)``."""
    defaults = tuple(defaults or ())
    first_default = len(args) - len(defaults)
    with_defaults = zip(args[first_default:], defaults, strict=True)
    parts = [*args[:first_default], *(f"{arg}={value!r}" for arg, value in with_defaults)]
    parts += [f"*{varargs}"] if varargs else []
    parts += [f"**{varkw}"] if varkw else []
    return f"({', '.join(parts)})"


_ArgSpec = collections.namedtuple("_ArgSpec", "args varargs keywords defaults")


def install() -> list[str]:
    """Put back what graphite-web and django-tagging use and the running Django removed; the names restored.

    Idempotent, and a no-op on a Django that still has them.  Must run before
    ``django.setup()`` imports graphite-web's applications.
    """
    from django.conf import urls
    from django.urls import re_path
    from django.utils import encoding, timezone

    restored = []
    # Django 4.0 removed smart_text and force_text (aliases of smart_str and force_str since 2.0);
    # django-tagging's models import smart_text.
    for old, new in (("smart_text", encoding.smart_str), ("force_text", encoding.force_str)):
        if not hasattr(encoding, old):
            setattr(encoding, old, new)
            restored.append(f"django.utils.encoding.{old}")
    # Django 4.0 removed django.conf.urls.url (an alias of re_path since 2.0); every urls.py of graphite-web uses it.
    if not hasattr(urls, "url"):
        urls.url = re_path
        restored.append("django.conf.urls.url")
    # Django 5.0 removed pytz support: make_aware() only attaches the zone (tzinfo=), which gives a pytz zone its
    # first historical offset (Europe/Paris +00:09).  graphite.util.epoch() makes naive datetimes aware with
    # pytz.timezone(TIME_ZONE); with localize() they get the offset in force at that date, as before.
    if "is_dst" not in timezone.make_aware.__code__.co_varnames and not hasattr(timezone.make_aware, "__wrapped__"):
        timezone.make_aware = _make_aware_localizing(timezone.make_aware)
        restored.append("django.utils.timezone.make_aware(pytz zone)")
    # Python 3.11 removed inspect.getargspec and inspect.formatargspec; graphite.functions.functionInfo calls both
    # for every function /functions lists (the API graphite-web's and Grafana's function editors read).
    for name, restore in (("getargspec", _getargspec), ("formatargspec", _formatargspec)):
        if not hasattr(inspect, name):
            setattr(inspect, name, restore)
            restored.append(f"inspect.{name}")
    return restored
