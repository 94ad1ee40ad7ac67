"""A form's text fields, validated: into a pydantic form, and the model they name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from gpuscribe.api.errors import ApiError, validation_message
from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest
from gpuscribe.workers.models import canonical_name, check_engine, resolve_model

FormT = TypeVar("FormT", bound=BaseModel)


def parse_form(
    fields: Mapping[str, list[str]], form: type[FormT], lists: tuple[str, ...] = ()
) -> FormT:
    """Validate text fields into `form`; empty values count as absent. 400 naming the field."""
    values: dict[str, object] = {}
    for name, items in fields.items():
        present = [v for v in items if v != ""]
        if not present:
            continue
        if name in lists:
            values[name] = present
        elif len(present) > 1:
            raise ApiError(400, f"form field {name!r} is given more than once", param=name)
        else:
            values[name] = present[0]
    try:
        return form.model_validate(values)
    except ValidationError as exc:
        message, param = validation_message(exc.errors(), "form field")
        raise ApiError(400, message, code="invalid_value", param=param) from exc


def resolve_model_name(name: str, engine: str, settings: Settings) -> str:
    """The canonical name of a model this server can run with `engine` (400 otherwise). On
    simulated GPUs no weights are needed: a known name is enough. Blocking (file system)."""
    if settings.simulate_gpus:
        check_engine(engine)
        return canonical_name(name)
    try:
        source = resolve_model(
            name,
            engine,
            models_dir=settings.models_dir,
            allow_downloads=settings.allow_downloads,
            benchmark_only=settings.benchmark_only,
        )
    except InvalidRequest as exc:
        message = exc.message
        if exc.code == "model_not_found":
            message += f" (or fetch it with `gpuscribe models pull {name} --engine {engine}`)"
        raise InvalidRequest(message, code=exc.code, param=exc.param or "model") from exc
    return source.name
