"""The `soul` command: configuration (options bound to environment variables, read once in `configure` and
passed down as `Settings`), the commands, and the one place that turns a `CliError` into a clean message and
an exit status. Results go to stdout (a URL, a task id, a table, JSON); progress and errors go to stderr.

Exit status: 0 done, 1 the task failed or was canceled, 2 bad usage or an error answer from the API or
Pub/Sub, 3 `--timeout` passed while the task was still running."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

import soul_client
from soul_cli import bus, dead_letters, render
from soul_cli.local import apply as apply_local_stack
from soul_cli.errors import ApiError, ApiUnreachable, BadResponse, BusError, CliError, TaskUnsuccessful
from soul_cli.waiting import wait_for_task
from soul_client import Client, TaskHandle
from soul_client.models import ImageReady, JobStatus, JobType, Task
from schemas import names
from soul_cli import __version__

DEFAULT_API_URL = "http://localhost:8080"
DEFAULT_PROJECT_ID = "soul-local"  # as the deployables default


@dataclass(frozen=True)
class Settings:
    """Everything the commands read from flags or the environment."""

    api_url: str
    api_key: str | None
    project_id: str

    def client(self) -> Client:
        return Client(self.api_url, self.api_key, user_agent=f"soul-cli/{__version__}")


class _SoulGroup(TyperGroup):
    """Reports every CliError, from any subcommand, as `error: <message>` and its exit status; the client's
    errors become CliErrors here (`_cli_error`)."""

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            except soul_client.SoulError as exc:
                raise _cli_error(exc, ctx.find_object(Settings)) from None
        except CliError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


def _cli_error(exc: soul_client.SoulError, settings: Settings | None) -> CliError:
    """The client's error as the CLI reports it (and the exit status that goes with it)."""
    if isinstance(exc, soul_client.ApiError):
        return ApiError(exc.status, exc.code, exc.message, exc.field)
    if isinstance(exc, soul_client.TransportError):
        where = settings.api_url if settings else "its URL"
        reason = "no answer in time" if "in time" in str(exc) else (
            "connection failed (is the API running? `make run` starts it locally)")
        return ApiUnreachable(f"cannot reach the Soul API at {where}: {reason}")
    if isinstance(exc, soul_client.BadResponse):
        return BadResponse(str(exc))
    return CliError(str(exc))


app = typer.Typer(
    cls=_SoulGroup,
    name="soul",
    help="Ask the Soul service for images of souls, follow their tasks, and look after its Pub/Sub queues.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs
    pretty_exceptions_show_locals=False,  # locals would include the API key
)
dead_letters_app = typer.Typer(
    help=f"Job messages parked on {names.SUB_JOBS_DEAD_LETTER}: look at them, replay them.", no_args_is_help=True
)
app.add_typer(dead_letters_app, name="dead-letters")


@app.callback()
def configure(
    ctx: typer.Context,
    api_url: Annotated[str, typer.Option(envvar="SOUL_API_URL", help="Base URL of the `api` function.")] = (
        DEFAULT_API_URL
    ),
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SOUL_API_KEY", show_default=False, help="Sent as `X-API-Key: <key>`."),
    ] = None,
    project: Annotated[
        str,
        typer.Option(envvar=["GCS_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"], help="GCP project of the Pub/Sub topics."),
    ] = DEFAULT_PROJECT_ID,
) -> None:
    api_url_given = bool(os.environ.get("SOUL_API_URL")) or api_url != DEFAULT_API_URL
    local = apply_local_stack()  # a `make run` stack in this directory, when no emulator is named
    if local and not api_url_given:
        api_url = local.get("SOUL_API_URL", api_url)
    if local and project == DEFAULT_PROJECT_ID:
        project = local.get("GCS_PROJECT_ID", project)
    ctx.obj = Settings(api_url=api_url.rstrip("/"), api_key=api_key or None, project_id=project)


def _settings(ctx: typer.Context) -> Settings:
    return ctx.find_object(Settings)


# ---- images ------------------------------------------------------------------------------------------------------

UserOption = Annotated[str, typer.Option("--user", "-u", help="The end user; each gets variants they have not seen.")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow a queued task to its end.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for the task.")]
PollOption = Annotated[float, typer.Option("--poll-interval", min=0.01, help="Seconds between task polls.")]


@app.command()
def image(
    ctx: typer.Context,
    soul_id: Annotated[str, typer.Argument(help="The soul to draw, e.g. nova.")],
    cue: Annotated[str, typer.Argument(help="A short cue, e.g. penguin.")],
    user: UserOption,
    wait: WaitOption = True,
    timeout: TimeoutOption = 300.0,
    poll_interval: PollOption = 1.0,
) -> None:
    """Get an image of SOUL_ID for CUE and print its signed URL (or, with --no-wait, the queued task's id)."""
    with _settings(ctx).client() as client:
        answer = TaskHandle(client, client.image_get(soul_id=soul_id, cue=cue, user_id=user))
        _deliver(answer, wait=wait, timeout_s=timeout, poll_interval_s=poll_interval)


@app.command()
def selfie(
    ctx: typer.Context,
    soul_id: Annotated[str, typer.Argument(help="The soul taking the selfie, e.g. nova.")],
    city: Annotated[str, typer.Option("--city", help="City key, e.g. paris, tokyo, new_york.")],
    mood: Annotated[str, typer.Option("--mood", help="e.g. happy, calm, adventurous.")],
    user: UserOption,
    wait: WaitOption = True,
    timeout: TimeoutOption = 300.0,
    poll_interval: PollOption = 1.0,
) -> None:
    """Get a selfie of SOUL_ID in a place of CITY and print its signed URL; the place goes to stderr."""
    with _settings(ctx).client() as client:
        answer = client.selfie(soul_id, city, mood, user)
        _deliver(answer, wait=wait, timeout_s=timeout, poll_interval_s=poll_interval)


def _deliver(handle: TaskHandle, *, wait: bool, timeout_s: float, poll_interval_s: float) -> None:
    answer = handle.answer
    if answer.place is not None:
        typer.echo(f"place: {answer.place.name}, {answer.place.city_name}", err=True)
    if isinstance(answer, ImageReady):
        typer.echo(answer.variant.url)
        return
    if not wait:
        typer.echo(f"queued as task {answer.task_id} (about {answer.estimated_seconds:.0f} s); "
                   f"follow it with `soul task {answer.task_id}`", err=True)
        typer.echo(answer.task_id)
        return
    task = wait_for_task(handle, timeout_s=timeout_s, poll_interval_s=poll_interval_s, console=Console(stderr=True))
    typer.echo(_image_url(task))


def _image_url(task: Task) -> str:
    """The URL of a finished task's variant, or the reason there is none."""
    if task.status == JobStatus.succeeded:
        url = render.task_url(task)
        if url is None and task.result is not None and task.result.withheld is not None:
            raise TaskUnsuccessful(f"task {task.task_id} succeeded but its image is withheld: "
                                   f"{task.result.withheld.reason}")
        if url is None:
            raise BadResponse(f"task {task.task_id} succeeded but its result names no variant")
        return url
    if task.status == JobStatus.failed:
        detail = f": {task.error.type}: {task.error.message}" if task.error else ""
        raise TaskUnsuccessful(f"task {task.task_id} failed{detail}")
    raise TaskUnsuccessful(f"task {task.task_id} was canceled")


# ---- tasks -------------------------------------------------------------------------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("task")
def show_task(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="e.g. img-0123…-0")],
    as_json: JsonOption = False,
) -> None:
    """Show one task: status, progress, stage, ETA, and its result or error."""
    with _settings(ctx).client() as client:
        task = client.task_get(task_id)
    if as_json:
        typer.echo(task.model_dump_json(indent=2))
    else:
        Console().print(render.task_table(task))


@app.command("tasks")
def list_tasks(
    ctx: typer.Context,
    status: Annotated[JobStatus | None, typer.Option(help="Only tasks in this status.")] = None,
    job_type: Annotated[JobType | None, typer.Option("--type", help="Only tasks of this type.")] = None,
    soul: Annotated[str | None, typer.Option(help="Only tasks of this soul.")] = None,
    user: Annotated[str | None, typer.Option(help="Only tasks of this user.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many tasks, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON task per line.")] = False,
) -> None:
    """List tasks, newest first, following the API's pages up to --limit."""
    with _settings(ctx).client() as client:
        tasks = list(client.tasks(limit=limit, status=status, type_=job_type, soul_id=soul, user_id=user))
    if as_json:
        for task in tasks:
            typer.echo(task.model_dump_json())
    elif tasks:
        Console().print(render.tasks_table(tasks))
    else:
        typer.echo("no tasks", err=True)


@app.command()
def cancel(ctx: typer.Context, task_id: Annotated[str, typer.Argument(help="The task to cancel.")]) -> None:
    """Cancel a queued task at once, or ask the runner to stop a running one at its next step."""
    with _settings(ctx).client() as client:
        task = client.task_cancel(task_id)
    if task.status == JobStatus.canceled:
        typer.echo(f"canceled {task.task_id}")
    else:
        typer.echo(f"cancel requested for {task.task_id} ({task.status}); the runner stops it at its next step")


# ---- Pub/Sub -----------------------------------------------------------------------------------------------------


@app.command()
def events(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Keep waiting for new events.")] = False,
    max_events: Annotated[int | None, typer.Option("--max", min=1, help="Stop after this many events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each message raw: attributes and data.")] = False,
) -> None:
    """Print the events on soul-events-sub: time, type, id, status.

    Each event is acked once printed: this subscription is for tailing, not for the services."""
    with bus.connect(_settings(ctx).project_id) as pubsub:
        try:
            for batch in pubsub.batches(names.SUB_EVENTS, follow=follow, limit=max_events):
                for received in batch:
                    typer.echo(render.message_json(received) if as_json else render.event_line(received))
                pubsub.ack(names.SUB_EVENTS, [received.ack_id for received in batch])
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a follow; what was printed was acked, the rest is delivered again


MaxOption = Annotated[int, typer.Option("--max", min=1, help="Look at this many messages at most.")]


@dead_letters_app.command("list")
def list_dead_letters(ctx: typer.Context, max_messages: MaxOption = 100, as_json: JsonOption = False) -> None:
    """Show dead-lettered job messages, their attributes, and whether each can be replayed.

    Nothing is acked: the messages go back for the next reader."""
    with bus.connect(_settings(ctx).project_id) as pubsub:
        letters = dead_letters.hold(pubsub, max_messages)
        try:
            _show_dead_letters(letters, as_json=as_json)
        finally:
            _put_back(pubsub, letters)


@dead_letters_app.command("replay")
def replay_dead_letters(
    ctx: typer.Context,
    max_messages: MaxOption = 100,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before replaying.")] = False,
) -> None:
    """Publish the valid dead-lettered job messages onto soul-jobs again.

    Same data and attributes, minus the soul-dead-letter-* notes; each is acked on the dead-letter subscription
    once published. Messages that are not a valid JobRequested are reported and left in place."""
    with bus.connect(_settings(ctx).project_id, publish=True) as pubsub:
        letters = dead_letters.hold(pubsub, max_messages)
        left = list(letters)
        try:
            for letter in letters:
                if not letter.replayable:
                    typer.echo(f"left {letter.received.message_id}: {letter.problem}", err=True)
            replayable = [letter for letter in letters if letter.replayable]
            if not replayable:
                typer.echo("nothing to replay", err=True)
                return
            if not yes:
                _show_dead_letters(replayable, as_json=False)
                typer.confirm(f"Replay {len(replayable)} message(s) onto {names.TOPIC_JOBS}?", abort=True)
            for letter in replayable:
                message_id = dead_letters.replay(pubsub, letter)
                left.remove(letter)
                typer.echo(f"replayed {letter.job.job_id} ({letter.job.type}) as message {message_id}")
            typer.echo(f"replayed {len(replayable)}, left {len(left)}", err=True)
        finally:
            _put_back(pubsub, left)


def _show_dead_letters(letters: list[dead_letters.DeadLetter], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            typer.echo(render.dead_letter_json(letter))
    elif letters:
        Console().print(render.dead_letters_table(letters))
    else:
        typer.echo(f"{names.SUB_JOBS_DEAD_LETTER} is empty", err=True)


def _put_back(pubsub: bus.Bus, letters: list[dead_letters.DeadLetter]) -> None:
    try:
        dead_letters.put_back(pubsub, letters)
    except BusError as exc:
        typer.echo(f"warning: {len(letters)} message(s) not put back ({exc}); they return when their lease ends "
                   f"in {dead_letters.HOLD_SECONDS // 60} min", err=True)
