"""Tests for imaginator.image.triggers: the file format, image JSON and merging (§4.5)."""

from __future__ import annotations

from typing import Any

import pytest

from imaginator.image.triggers import (
    Trigger,
    TriggersError,
    merge_triggers,
    parse_triggers,
    triggers_from_json,
    triggers_to_json,
)

CRON = Trigger(match_lines=("/usr/sbin/cron",), service="cron")
RSYSLOG = Trigger(match_lines=("/etc/rsyslog[.].*",), service="rsyslog", sort_name="10-rsyslog")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", ()),
        ("null", ()),
        ('[{"MatchLines": ["/usr/sbin/cron"], "Service": "cron"}]', (CRON,)),
        (
            "# restart services\n"
            "[\n"
            '  {"MatchLines": ["/usr/sbin/cron"], "Service": "cron", "Unknown": 1},\n'
            "  // the logger\n"
            '  {"MatchLines": ["/etc/rsyslog[.].*"], "Service": "rsyslog",\n'
            '   "SortName": "10-rsyslog"}\n'
            "]\n",
            (CRON, RSYSLOG),
        ),
        (
            '[{"MatchLines": ["/boot/.*"], "Service": "kernel", "DoReboot": true,'
            ' "DoReload": false, "HighImpact": true}]',
            (Trigger(("/boot/.*",), "kernel", do_reboot=True, high_impact=True),),
        ),
        (
            '[{"MatchLines": null, "Service": "x", "DoReload": true, "SortName": null}]',
            (Trigger((), "x", do_reload=True),),
        ),
    ],
)
def test_parse_triggers(text: str, expected: tuple[Trigger, ...]) -> None:
    assert parse_triggers(text.encode(), "triggers") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", "error decoding triggers triggers.add: line 1 column 2: Expecting value"),
        ("{}", "error decoding triggers triggers.add: triggers: expected a list, got {}"),
        ("[1]", "error decoding triggers triggers.add: [0]: expected an object, got 1"),
        (
            '[{"Service": "a"}, {"Service": 2}]',
            "error decoding triggers triggers.add: [1].Service: expected a string, got 2",
        ),
        (
            '[{"MatchLines": "/x", "Service": "a"}]',
            "error decoding triggers triggers.add: [0].MatchLines: "
            'expected a list of strings, got "/x"',
        ),
        (
            '[{"MatchLines": ["/x", 3], "Service": "a"}]',
            "error decoding triggers triggers.add: [0].MatchLines[1]: expected a string, got 3",
        ),
        (
            '[{"MatchLines": ["/x", "("], "Service": "a"}]',
            "error decoding triggers triggers.add: [0].MatchLines[1]: "
            'bad regular expression "(": missing closing )',
        ),
        (
            '[{"MatchLines": [""], "Service": "a"}]',
            "error decoding triggers triggers.add: [0].MatchLines[0]: empty expression",
        ),
        (
            '[{"Service": "a", "DoReboot": "yes"}]',
            'error decoding triggers triggers.add: [0].DoReboot: expected true or false, got "yes"',
        ),
    ],
)
def test_parse_triggers_errors(text: str, message: str) -> None:
    with pytest.raises(TriggersError) as info:
        parse_triggers(text, "triggers.add")
    assert str(info.value) == message


def test_to_json_omits_false_and_empty_fields() -> None:
    triggers = (
        CRON,
        RSYSLOG,
        Trigger((), "all", do_reboot=True, do_reload=True, high_impact=True),
    )
    document = triggers_to_json(triggers)
    assert document == {
        "Triggers": [
            {"MatchLines": ["/usr/sbin/cron"], "Service": "cron"},
            {"MatchLines": ["/etc/rsyslog[.].*"], "Service": "rsyslog", "SortName": "10-rsyslog"},
            {
                "MatchLines": [],
                "Service": "all",
                "DoReboot": True,
                "DoReload": True,
                "HighImpact": True,
            },
        ]
    }
    assert document is not None
    # Key order as Go emits it.
    assert list(document["Triggers"][2]) == [
        "MatchLines",
        "Service",
        "DoReboot",
        "DoReload",
        "HighImpact",
    ]
    assert triggers_from_json(document) == triggers


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, None),
        ({"Triggers": None}, ()),
        ({"Triggers": []}, ()),
        ({"Triggers": [{"MatchLines": ["/usr/sbin/cron"], "Service": "cron"}]}, (CRON,)),
    ],
)
def test_from_json(obj: Any, expected: tuple[Trigger, ...] | None) -> None:
    assert triggers_from_json(obj) == expected


def test_none_round_trips() -> None:
    assert triggers_to_json(None) is None


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "Triggers: expected an object, got []"),
        ({"Triggers": {}}, "Triggers: expected a list, got {}"),
        (
            {"Triggers": [{"MatchLines": ["("]}]},
            "Triggers[0].MatchLines[0]: bad regular expression",
        ),
    ],
)
def test_from_json_errors(obj: Any, message: str) -> None:
    with pytest.raises(TriggersError, match=message.replace("[", r"\[").replace("(", r"\(")):
        triggers_from_json(obj)


def T(service: str, *lines: str, **flags: Any) -> Trigger:
    return Trigger(tuple(lines), service, **flags)


@pytest.mark.parametrize(
    ("old", "add", "expected"),
    [
        (None, (), None),
        ((), (), None),
        (None, (T("a", "/x"),), (T("a", "/x"),)),
        ((T("a", "/x"),), (), (T("a", "/x"),)),
        # same service: lines unioned and sorted, flags OR-ed
        (
            (T("a", "/z", "/x", do_reboot=True),),
            (T("a", "/y", "/x", high_impact=True),),
            (T("a", "/x", "/y", "/z", do_reboot=True, high_impact=True),),
        ),
        # DoReload is part of the key: reload variant first
        (
            (T("a", "/x"),),
            (T("a", "/y", do_reload=True),),
            (T("a", "/y", do_reload=True), T("a", "/x")),
        ),
        # sorted by service; SortName dropped
        (
            (T("zz", "/z", sort_name="1"),),
            (T("b", "/b"), T("aa", "/a", sort_name="2")),
            (T("aa", "/a"), T("b", "/b"), T("zz", "/z")),
        ),
        # duplicates inside one list merge too
        (
            None,
            (T("a", "/x"), T("a", "/x"), T("a", "/w")),
            (T("a", "/w", "/x"),),
        ),
    ],
)
def test_merge_triggers(
    old: tuple[Trigger, ...] | None,
    add: tuple[Trigger, ...],
    expected: tuple[Trigger, ...] | None,
) -> None:
    assert merge_triggers(old, add) == expected
