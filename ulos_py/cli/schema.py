"""`ulos-py schema`: the task message format as JSON Schema, for other systems' validators."""

from __future__ import annotations

import json

import click

from ulos_py.models import task_json_schema


@click.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of a task message (SPEC §2).

    Field names are the wire names (camelCase); unknown fields are allowed and kept.
    """
    click.echo(json.dumps(task_json_schema(), indent=2))
