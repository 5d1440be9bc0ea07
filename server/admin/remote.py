"""What every client command shares: the connection options, the client, and the one place errors exit.

`remote_command` adds `--server`, `--api-key`, `--tls-ca`, `--tls-cert`/`--tls-key`, `--timeout-s`, `--json` and `--actor` to a
click command and hands it a `Remote`. A failed call (a typed `tariff.TariffError`, or a raw `grpc.RpcError`) ends
the command here: the status code and the server's message on stderr, exit status 1, or 3 when the server was not
reached (UNAVAILABLE) or did not answer within --timeout-s (DEADLINE_EXCEEDED). grpc and the client library are
imported only when a command runs, so `tariff --help` stays fast.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from server.admin.output import echo_line

if TYPE_CHECKING:
    from tariff import AsyncTariffClient, TariffClient, TariffError

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_ERROR = 1
# The server was not reached (UNAVAILABLE) or did not answer within --timeout-s (DEADLINE_EXCEEDED): worth trying
# again, unlike a call the server refused (1) or a malformed argument (2).
EXIT_NO_ANSWER = 3
# Ctrl-C while a command waits (128 + SIGINT, as the shell reports for an interrupted command); not 1, a failed call.
EXIT_INTERRUPTED = 130
# --timeout-s: every unary call's deadline. A day at most: a longer wait is a command that hangs.
TIMEOUT_S_DEFAULT = 10.0
TIMEOUT_S_MAX = 86_400.0
# What an API key may hold: `tariff keys new` makes URL-safe base64; gRPC metadata carries visible ASCII only.
API_KEY_PATTERN = re.compile(r"^[!-~]*$")


@dataclass(frozen=True)
class Remote:
    """Where and how to reach the server, and how to print what it answers."""

    server: str
    api_key: str | None
    tls_ca: Path | None
    as_json: bool
    actor: str | None = None  # sent as x-actor: the person the audit log records for this command's changes
    tls_cert: Path | None = None  # the client's own certificate chain and key, for a mutual-TLS server
    tls_key: Path | None = None
    timeout_s: float = TIMEOUT_S_DEFAULT  # the deadline of every unary call (streams have none)

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "api_key": self.api_key or None,
            "actor": self.actor or None,
            "default_timeout_s": self.timeout_s,
        }
        if self.tls_ca is not None:
            options["root_certificates"] = self.tls_ca.read_bytes()
        if self.tls_cert is not None and self.tls_key is not None:
            options["client_certificate_chain"] = self.tls_cert.read_bytes()
            options["client_private_key"] = self.tls_key.read_bytes()
        host = self.server.rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1"):
            # A loopback server is never behind the HTTP proxy an environment may name.
            options["channel_options"] = [("grpc.enable_http_proxy", 0)]
        return options

    def client(self) -> TariffClient:
        from tariff import TariffClient

        return TariffClient(self.server, **self._client_options())

    def async_client(self) -> AsyncTariffClient:
        from tariff import AsyncTariffClient

        return AsyncTariffClient(self.server, **self._client_options())


def as_tariff_error(exc: BaseException) -> TariffError | None:
    """The typed error of a failed call, or None when `exc` is not one."""
    if "grpc" not in sys.modules:
        return None  # nothing talked to a server yet
    import grpc
    from tariff import TariffError, error_from_rpc

    if isinstance(exc, TariffError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    return None


def error_text(error: TariffError) -> str:
    """`CODE: message`, then the field violations the message does not already state (a refusal's message is its
    first violation, or says how many there are), each printed once."""
    text = f"{error.code.name}: {error.details}" if error.details else str(error.code.name)
    said = [f"{v.field}: {v.description}" if v.field else v.description for v in error.field_violations]
    unsaid = [violation for violation in said if violation not in error.details]
    return text + (" [" + "; ".join(unsaid) + "]" if unsaid else "")


def no_answer_text(error: TariffError, timeout_s: float) -> str | None:
    """The line of a call the server did not answer: UNAVAILABLE as gRPC says why, DEADLINE_EXCEEDED with the
    deadline that passed; None for any other error."""
    import grpc

    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{error_text(error)} (no answer within --timeout-s {timeout_s:g})"
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return error_text(error)
    return None


def fail(message: str, status: int = EXIT_ERROR) -> NoReturn:
    echo_line(f"tariff: {message}", err=True)
    sys.exit(status)


def checked_server(_ctx: click.Context, _param: click.Parameter, server: str) -> str:
    """--server must name one: an empty one is a usage error, not a channel gRPC fails to make (UNKNOWN)."""
    if not server.strip():
        raise click.BadParameter("is empty: give HOST:PORT")
    return server


def checked_timeout(_ctx: click.Context, _param: click.Parameter, timeout_s: float) -> float:
    """--timeout-s (or TARIFF_TIMEOUT_S): seconds, more than 0 and at most a day; 0, a negative number, nan and inf
    are usage errors, not a call that fails at once or waits for ever."""
    if not 0 < timeout_s <= TIMEOUT_S_MAX:  # NaN is refused too
        raise click.BadParameter(f"{timeout_s:g} is not more than 0 and at most {TIMEOUT_S_MAX:g} seconds")
    return timeout_s


def checked_actor(_ctx: click.Context, _param: click.Parameter, actor: str | None) -> str | None:
    """--actor (or TARIFF_ACTOR) as the wire's x-actor grammar has it (proto AuditEntry.actor); another value is a
    usage error here, not a call that fails (gRPC cannot send a character outside ASCII at all)."""
    if not actor:
        return actor
    from server.auth import is_actor_name

    if not is_actor_name(actor):
        raise click.BadParameter(f"{actor[:32]!r} is not 1-128 letters, digits and ._:@- (an x-actor)")
    return actor


def checked_api_key(_ctx: click.Context, _param: click.Parameter, api_key: str | None) -> str | None:
    """--api-key (or TARIFF_API_KEY): visible ASCII, as a key `tariff keys new` made is; gRPC cannot send another."""
    if api_key and not API_KEY_PATTERN.fullmatch(api_key):  # whole: `$` also matches before a final newline
        raise click.BadParameter("holds a character no API key has (keys are visible ASCII)")
    return api_key


def refuse_text_not_utf8(arguments: dict[str, Any]) -> None:
    """A usage error for an argument that is no UTF-8 text (bytes from a Latin-1 terminal reach Python as lone
    surrogates, which no request can carry): before anything is sent, not a traceback when a request is built."""
    ctx = click.get_current_context()
    for name, value in arguments.items():
        for text in value if isinstance(value, tuple) else (value,):
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                param = next((p for p in ctx.command.params if p.name == name), None)
                shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise click.BadParameter(f"'{shown}' is not UTF-8 text", ctx=ctx, param=param) from None


def until_interrupted(command: Callable[..., None]) -> Callable[..., None]:
    """For a command that follows a stream until Ctrl-C: the interrupt is how it ends, so status 0 and no "Aborted!"."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            return

    return run


# The options every client command takes, in the order `--help` lists them.
_CONNECTION_OPTIONS = (
    click.option(
        "--server",
        envvar="TARIFF_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        callback=checked_server,
        help="host:port of the Tariff server (env TARIFF_SERVER)",
    ),
    click.option(
        "--api-key",
        envvar="TARIFF_API_KEY",
        callback=checked_api_key,
        help="API key, sent as a bearer token (env TARIFF_API_KEY)",
    ),
    click.option(
        "--tls-ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="TARIFF_TLS_CA",
        help="PEM CA to trust: connect with TLS (env TARIFF_TLS_CA)",
    ),
    click.option(
        "--tls-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="TARIFF_TLS_CERT",
        help="PEM certificate chain to present to a mutual-TLS server, with --tls-key (env TARIFF_TLS_CERT)",
    ),
    click.option(
        "--tls-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="TARIFF_TLS_KEY",
        help="PEM private key of --tls-cert (env TARIFF_TLS_KEY)",
    ),
    click.option(
        "--timeout-s",
        type=float,
        envvar="TARIFF_TIMEOUT_S",
        default=TIMEOUT_S_DEFAULT,
        show_default=True,
        callback=checked_timeout,
        help=f"seconds to wait for each answer, more than 0 and at most {TIMEOUT_S_MAX:,.0f} (a unary call's deadline; "
        "watch and usage send streams have none); "
        f"past it: DEADLINE_EXCEEDED, exit {EXIT_NO_ANSWER} (env TARIFF_TIMEOUT_S)",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="print JSON (protobuf's JSON mapping, with the proto field names) instead of tables",
    ),
    click.option(
        "--actor",
        envvar="TARIFF_ACTOR",
        callback=checked_actor,
        help="who the audit log records for the changes: 1-128 letters, digits and ._:@- (sent as x-actor; with an "
        "API key: PERSON via KEY) (env TARIFF_ACTOR)",
    ),
)


def remote_command(command: Callable[..., None]) -> Callable[..., None]:
    """Adds the connection options to a command; a failed call exits 1 with the server's code and message, 3 when
    the server was not reached or did not answer within --timeout-s."""

    @functools.wraps(command)
    def run(
        server: str,
        api_key: str | None,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        timeout_s: float,
        as_json: bool,
        actor: str | None,
        **kwargs: Any,
    ) -> None:
        if sys.stdout is None:  # `tariff ... >&-`: the answer could go nowhere, so nothing is asked
            fail("stdout is closed: nothing was sent (>/dev/null discards the output)", 2)
        refuse_text_not_utf8({"server": server, **kwargs})
        if (tls_cert is None) != (tls_key is None):
            raise click.UsageError("--tls-cert and --tls-key go together (the client's certificate for mutual TLS)")
        # Before grpc loads: gRPC core's own log lines (`ssl_utils.cc ... TSI_INVALID_ARGUMENT` for a CA file that is
        # no PEM) must not bury the one line a failed call prints; GRPC_VERBOSITY in the environment still wins.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        remote = Remote(server, api_key, tls_ca, as_json, actor, tls_cert, tls_key, timeout_s)
        _run_exiting_on_failure(command, remote, timeout_s, kwargs)

    # Applied last to first, as a stack of decorators is.
    for option in reversed(_CONNECTION_OPTIONS):
        run = option(run)
    return run


def _run_exiting_on_failure(
    command: Callable[..., None], remote: Remote, timeout_s: float, kwargs: dict[str, Any]
) -> None:
    """Runs the command; a failed call exits with the server's code and message (1), or EXIT_NO_ANSWER."""
    try:
        command(remote, **kwargs)
    except KeyboardInterrupt:  # a watch command's ends it with status 0 before it gets here
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        error = as_tariff_error(exc)
        if error is None:
            raise
        no_answer = no_answer_text(error, timeout_s)
        if no_answer is not None:
            fail(no_answer, EXIT_NO_ANSWER)
        fail(error_text(error))
