"""Command-line arguments of a training job, shared by ``python -m jobs.train`` and ``maas train``.

Generated from :class:`TrainConfig`'s fields: each setting becomes ``--<name>`` with the field's
type, default, choices and description, in a section per group; what a flag does differently
(``--num-workers MIN-MAX``, ``--resume RUN_NAME``, ``--cv K``) its field declares
(:class:`~maas.training.config.Setting`). Bounds are checked by the model, not by argparse, so that
a value out of bounds fails with the model's one line (exit code 2, through ``run_cli``).
"""

from __future__ import annotations

import argparse
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from maas.training.config import GROUPS, Setting, TrainConfig, setting_of


@dataclass(frozen=True)
class Option:
    """One setting's command-line option, as :func:`options` derives it from the field."""

    name: str  # the field
    flag: str
    setting: Setting
    default: Any  # the option's default: the field's, or None ("not given") where that is not fixed
    shown_default: Any  # what --help says the default is (None: the description says it)


def options() -> list[tuple[type, list[Option]]]:
    """Every setting that has a flag, by group, in declaration order."""
    return [(group, [_option(name, TrainConfig.model_fields[name]) for name in group.model_fields
                     if setting_of(TrainConfig.model_fields[name]).flag is not None])
            for group in GROUPS]


def _option(name: str, field: FieldInfo) -> Option:
    setting = setting_of(field)
    flag = setting.flag or "--" + name.replace("_", "-")
    if field.default_factory is not None:  # resolved where the job runs, not where it is submitted
        factory: Any = field.default_factory
        return Option(name, flag, setting, None, factory())
    if setting.given_only:
        return Option(name, flag, setting, None, None)
    default = field.get_default()
    return Option(name, flag, setting, default, default)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Add every training option to ``p``, a section per group of settings."""
    for group, group_options in options():
        section = p.add_argument_group(group.__name__.lower(), textwrap.fill(" ".join((group.__doc__ or "").split())))
        for option in group_options:
            _add(section, option, TrainConfig.model_fields[option.name])


def _add(section: argparse._ArgumentGroup, option: Option, field: FieldInfo) -> None:
    setting = option.setting
    help_text = (field.description or "").replace("%", "%%")
    if option.shown_default is not None and option.shown_default is not False:
        help_text += f" (default: {_shown(option.shown_default)})"
    kind = _plain(field.annotation)
    if setting.parse is None and kind is bool:
        if field.get_default() is None:  # on, off, or decided by another setting
            section.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                 default=None, help=help_text)
        else:
            section.add_argument(option.flag, dest=option.name, action="store_true", help=help_text)
        return
    choices = setting.choices or (get_args(kind) if get_origin(kind) is Literal else None)
    parse: Any = setting.parse or (kind if kind in (int, float) else str)
    section.add_argument(option.flag, dest=option.name, type=parse, default=option.default, choices=choices,
                         metavar=setting.metavar, help=help_text)


def _plain(annotation: Any) -> Any:
    """``X`` of ``X | None``; other annotations as they are."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """A validated :class:`TrainConfig` from parsed arguments (options not given keep their defaults)."""
    values: dict[str, Any] = {}
    for _, group_options in options():
        for option in group_options:
            value = getattr(ns, option.name, None)
            if value is None:
                continue
            convert = option.setting.to_settings
            values.update(convert(value) if convert is not None else {option.name: value})
    return TrainConfig(**values)


def to_argv(ns: argparse.Namespace) -> list[str]:
    """The options given in ``ns`` as command-line arguments again (to forward to a submitted job):
    those whose value is not the option's default."""
    argv: list[str] = []
    for _, group_options in options():
        for option in group_options:
            value = getattr(ns, option.name, None)
            if value is None or value == option.default:
                continue
            if value is False:  # --no-mixed-precision: the default (None) is neither on nor off
                argv.append("--no-" + option.flag.removeprefix("--"))
            else:
                argv += [option.flag] if value is True else [option.flag, str(value)]
    return argv
