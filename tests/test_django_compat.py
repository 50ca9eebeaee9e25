"""dsat.tools.django_compat: what graphite-web 1.1.10 needs of Django and Python that they removed, and the
table of Django's security support.

These run on the Django that ``dsat[graphite]`` pins; graphite-web itself on it is proven over HTTP by
``tests/test_e2e.py``, ``tests/test_graphite_web.py`` and ``tests/test_compose.py``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import inspect
import logging
import re
import zoneinfo

import django
import pytest
import pytz
from django.conf import urls
from django.urls import re_path
from django.utils import encoding, timezone

from dsat.tools import django_compat
from dsat.tools.django_compat import SECURITY_SUPPORT, support_ends, support_warning
from dsat.tools.graphite_web import warn_about_django


def pinned_django() -> str:
    """The one pin of Django: dsat[graphite] in pyproject.toml, as the installed dsat's metadata states it."""
    pins = [
        req
        for req in importlib.metadata.requires("dsat") or []
        if re.match(r"django\s*==", req, re.IGNORECASE) and "graphite" in req
    ]
    assert len(pins) == 1, pins
    return pins[0].split(";")[0].split("==")[1].strip()


def test_the_installed_django_is_the_pinned_one_and_in_the_table() -> None:
    assert django.get_version() == pinned_django()
    assert django.VERSION[:2] in SECURITY_SUPPORT


def test_install_restores_what_graphite_web_and_django_tagging_import() -> None:
    django_compat.install()
    assert encoding.smart_text is encoding.smart_str  # type: ignore[attr-defined]
    assert encoding.force_text is encoding.force_str  # type: ignore[attr-defined]
    assert urls.url is re_path  # type: ignore[attr-defined]
    assert django_compat.install() == []  # a second call changes nothing


def test_make_aware_gives_a_pytz_zone_the_offset_of_that_date_as_django_before_5_did() -> None:
    django_compat.install()
    paris = pytz.timezone("Europe/Paris")
    summer = timezone.make_aware(datetime.datetime(2026, 7, 1, 12), paris)
    winter = timezone.make_aware(datetime.datetime(2026, 1, 15, 12), paris)
    assert summer.utcoffset() == datetime.timedelta(hours=2)
    assert winter.utcoffset() == datetime.timedelta(hours=1)
    # the nonexistent hour of the spring change: is_dst picks a side, None refuses, as pytz does
    gap = datetime.datetime(2026, 3, 29, 2, 30)
    assert timezone.make_aware(gap, paris, is_dst=True).utcoffset() == datetime.timedelta(hours=2)
    with pytest.raises(pytz.exceptions.NonExistentTimeError):
        timezone.make_aware(gap, paris, is_dst=None)
    # zoneinfo zones (Django's own since 4.0) and UTC are untouched
    assert timezone.make_aware(datetime.datetime(2026, 7, 1, 12), zoneinfo.ZoneInfo("Europe/Paris")).utcoffset() == (
        datetime.timedelta(hours=2)
    )
    assert timezone.make_aware(datetime.datetime(2026, 7, 1, 12), pytz.utc).utcoffset() == datetime.timedelta(0)
    with pytest.raises(ValueError, match="naive"):
        timezone.make_aware(summer, paris)


def sample(request_context, series_list, window=5, name="x", *nodes, **options):  # type: ignore[no-untyped-def]
    """A render function's shape."""


def test_getargspec_and_formatargspec_answer_as_python_3_10_did() -> None:
    django_compat.install()
    spec = inspect.getargspec(sample)  # type: ignore[attr-defined]
    assert spec.args == ["request_context", "series_list", "window", "name"]
    assert (spec.varargs, spec.keywords, spec.defaults) == ("nodes", "options", (5, "x"))
    # graphite.functions.functionInfo drops the first argument (requestContext)
    assert (
        inspect.formatargspec(spec[0][1:], spec[1], spec[2], spec[3])  # type: ignore[attr-defined]
        == "(series_list, window=5, name='x', *nodes, **options)"
    )
    assert inspect.formatargspec(["a"]) == "(a)"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("version", "today", "warned"),
    [
        ((5, 2, 20, "final", 0), datetime.date(2026, 12, 8), False),
        ((5, 2, 20, "final", 0), datetime.date(2028, 4, 30), False),
        ((5, 2, 20, "final", 0), datetime.date(2028, 5, 1), True),
        ((3, 2, 25, "final", 0), datetime.date(2026, 12, 8), True),
        ((4, 2, 27, "final", 0), datetime.date(2026, 5, 1), True),
        ((5, 1, 0, "final", 0), datetime.date(2025, 12, 31), False),
        ((5, 1, 0, "final", 0), datetime.date(2026, 1, 1), True),
    ],
)
def test_support_warning_follows_the_table(version: tuple[int, ...], today: datetime.date, warned: bool) -> None:
    warning = support_warning(version, today)
    assert (warning is not None) == warned
    if warned:
        ends = support_ends(version)
        assert ends is not None and ends <= today
        assert f"Django {'.'.join(map(str, version[:3]))}" in warning and f"{ends:%Y-%m-%d}" in warning


def test_a_django_missing_from_the_table_is_named_not_guessed() -> None:
    assert support_ends((9, 1, 0)) is None
    warning = support_warning((9, 1, 0, "final", 0), datetime.date(2026, 12, 8))
    assert warning is not None and "not in DSAT's table" in warning


def test_every_release_in_the_table_ends_on_the_first_of_a_month() -> None:
    for release, (year, month) in SECURITY_SUPPORT.items():
        ends = support_ends(release)
        assert ends is not None and ends.day == 1 and 1 <= month <= 12
        assert ends == (datetime.date(year, month, 28) + datetime.timedelta(days=4)).replace(day=1)


def test_graphite_web_logs_the_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """graphite-web's start (python -m dsat.tools.graphite_web, both stacks) warns when the running Django is past
    its support; the same run on a day it is supported says nothing."""
    ends = support_ends(django.VERSION)
    assert ends is not None
    with caplog.at_level(logging.WARNING, logger="dsat.tools.graphite_web"):
        assert warn_about_django(ends - datetime.timedelta(days=1)) is None
        assert not caplog.records
        warning = warn_about_django(ends)
    assert warning is not None and [r.getMessage() for r in caplog.records] == [warning]
