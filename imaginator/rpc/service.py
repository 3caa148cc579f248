"""The ``Imaginator`` SRPC service: the methods ``builder-tool`` calls.

Messages use the Go imaginator's JSON field names and encodings (durations
as integer nanoseconds, times as RFC 3339, bytes as base64). Requests are
decoded the way Go's ``encoding/json`` does (keys matched case-insensitively,
unknown keys ignored) and type errors carry Go's texts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imaginator.autobuild import AutoBuilder, AutoBuildError
from imaginator.config.main import BootstrapStream
from imaginator.deps import DependencyData, DependencyGenerator, graphviz_dot
from imaginator.goformats.gojson import JsonDecodeError
from imaginator.goformats.units import format_duration, format_time
from imaginator.image.model import format_go_time, image_to_json
from imaginator.pipeline.pack import BuildError
from imaginator.runtime.follower import FOLLOWER_BUFFER_LIMIT, Consumer, LogPump
from imaginator.scheduler import Builder, BuildOptions, BuildResult
from imaginator.srpc.identity import CallAuth
from imaginator.srpc.server import Call, CallError, MethodRegistry

NS = 1_000_000_000
STREAMS_WAIT = 60.0
PUBLIC_METHODS = frozenset(
    {"Imaginator.BuildImage", "Imaginator.GetDependencies", "Imaginator.GetDirectedGraph"}
)

_log = Logger()

# -- Go-style request decoding ---------------------------------------------------------

_GO_TYPES = {
    "bool": "bool",
    "duration": "time.Duration",
    "string": "string",
    "strings": "[]string",
    "map": "map[string]string",
}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}" if isinstance(value, float) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_request(obj: Any, struct: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Decode a JSON request into ``{Field: value}`` with Go's rules and error texts."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise CallError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {struct}")
    by_lower = {name.lower(): name for name in fields}
    result: dict[str, Any] = {name: _zero(kind) for name, kind in fields.items()}
    for key, value in obj.items():
        name = by_lower.get(key.lower())
        if name is None or value is None:
            continue
        result[name] = _convert(value, fields[name], f"{struct.rsplit('.', 1)[-1]}.{name}")
    return result


def _zero(kind: str) -> Any:
    return {"bool": False, "duration": 0, "string": "", "strings": [], "map": {}}[kind]


def _convert(value: Any, kind: str, where: str) -> Any:
    def refuse() -> CallError:
        return CallError(
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field {where} "
            f"of type {_GO_TYPES[kind]}"
        )

    if kind == "bool":
        if not isinstance(value, bool):
            raise refuse()
        return value
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse()
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise refuse()
        return value
    if kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise refuse()
        return list(value)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise refuse()
    return dict(value)


BUILD_IMAGE_REQUEST = {
    "DisableRecursiveBuild": "bool",
    "ExpiresIn": "duration",
    "GitBranch": "string",
    "MaxSourceAge": "duration",
    "MaximumBuildDuration": "duration",
    "ReturnImage": "bool",
    "StreamBuildLog": "bool",
    "StreamName": "string",
    "Variables": "map",
}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _go_time(epoch: float | None) -> str:
    return format_go_time(int(epoch * NS) if epoch else 0)


def build_response(
    *,
    image: dict[str, Any] | None = None,
    image_name: str = "",
    build_log: bytes | None = None,
    error: str = "",
    result: BuildResult | None = None,
) -> dict[str, Any]:
    """A ``BuildImageResponse`` with Go's field order."""
    need = result if result is not None and result.need_source_image else None
    return {
        "Image": image,
        "ImageName": image_name,
        "BuildLog": _b64(build_log),
        "ErrorString": error,
        "NeedSourceImage": need is not None,
        "SourceImage": need.source_image if need else "",
        "SourceImageBuildVariables": (
            dict(need.source_image_build_variables) or None if need else None
        ),
        "SourceImageGitCommitId": need.source_image_git_commit_id if need else "",
    }


@dataclass
class ExpirationLimits:
    minimum: float = 15 * 60.0
    maximum: float = 24 * 3600.0
    maximum_privileged: float = 730 * 3600.0

    @classmethod
    def normalised(cls, minimum: float, maximum: float, privileged: float) -> ExpirationLimits:
        """Reference §1.3: the Go daemon's corrections of odd values."""
        maximum = maximum if maximum >= 1e-9 else 24 * 3600.0
        privileged = privileged if privileged >= 1e-9 else 730 * 3600.0
        privileged = max(privileged, maximum)
        if minimum <= 0:
            minimum = 15 * 60.0
        elif minimum < 15:
            minimum = 5 * 60.0
        return cls(minimum, maximum, privileged)


def _call_consumer(call: Call) -> Consumer | None:
    """The transport under ``call``: it pushes back when the client reads slowly.

    Without one (a test's fake call) the log is written as it comes.
    """
    return getattr(call, "consumer", None)


class ImaginatorService:
    """The handlers of the ``Imaginator`` SRPC service.

    A client streaming a build's log may fall ``follow_limit`` bytes behind
    before the log stream to it is dropped.
    """

    def __init__(
        self,
        *,
        builder: Builder,
        auto: AutoBuilder | None,
        deps: DependencyGenerator | None,
        clock: IReactorTime,
        limits: ExpirationLimits,
        streams_loaded: Callable[[], Deferred] | None = None,
        per_user_limit: int = 1,
        follow_limit: int = FOLLOWER_BUFFER_LIMIT,
    ) -> None:
        self.builder = builder
        self.auto = auto
        self.deps = deps
        self.clock = clock
        self.limits = limits
        self.streams_loaded = streams_loaded
        self.per_user_limit = per_user_limit
        self.follow_limit = follow_limit
        self._in_flight: dict[str, int] = {}

    def register(self, registry: MethodRegistry) -> None:
        registry.register(
            "Imaginator.BuildImage", self.build_image, kind="stream", admit=self.admit_build
        )
        registry.register("Imaginator.DisableAutoBuilds", self.disable_auto_builds)
        registry.register("Imaginator.DisableBuildRequests", self.disable_build_requests)
        registry.register("Imaginator.GetDependencies", self.get_dependencies)
        registry.register("Imaginator.GetDirectedGraph", self.get_directed_graph)
        registry.register("Imaginator.ReplaceIdleSlaves", self.replace_idle_slaves)
        registry.register("Imaginator.StartAutoBuilds", self.start_auto_builds)

    # -- BuildImage ------------------------------------------------------------------

    def admit_build(self, auth: CallAuth) -> tuple[str | None, Callable[[], None] | None]:
        """The per-user limit on concurrent ``BuildImage`` calls (not for method powers)."""
        user = auth.username
        if auth.have_method_access or self.per_user_limit <= 0:
            return None, None
        if self._in_flight.get(user, 0) >= self.per_user_limit:
            return f"{user} reached limit of {self.per_user_limit} calls for BuildImage", None
        self._in_flight[user] = self._in_flight.get(user, 0) + 1

        def release() -> None:
            self._in_flight[user] -= 1
            if not self._in_flight[user]:
                del self._in_flight[user]

        return None, release

    async def build_image(self, call: Call) -> None:
        try:
            raw = await call.read_json()
            request = decode_request(raw, "imaginator.BuildImageRequest", BUILD_IMAGE_REQUEST)
        except JsonDecodeError as exc:
            call.send_line(exc.text)
            return
        except CallError as exc:
            call.send_line(str(exc))
            return
        call.send_line()
        await self._build_image(call, request)

    async def _build_image(self, call: Call, request: dict[str, Any]) -> None:
        stream = request["StreamName"]
        try:
            await self._check_build_request(call.auth, request)
        except BuildError as exc:
            call.send_json(build_response(error=str(exc)))
            return
        options = BuildOptions.make(
            request["Variables"],
            expires_in=request["ExpiresIn"] / NS,
            git_branch=request["GitBranch"],
            max_source_age=request["MaxSourceAge"] / NS,
            maximum_build_duration=request["MaximumBuildDuration"] / NS,
            return_image=request["ReturnImage"],
            disable_recursive_build=request["DisableRecursiveBuild"],
        )
        log = self.builder.new_log()
        streaming = request["StreamBuildLog"]
        pump: LogPump | None = None
        if streaming:
            # At the client's pace: a client that stops reading is dropped with
            # a note (and still gets the result); the build never waits for it.
            pump = LogPump(
                log,
                _call_consumer(call),
                lambda chunk: call.send_json(build_response(build_log=chunk)),
                snapshot=False,
                limit=self.follow_limit,
            )
            pump.start()
            call.disconnected.addCallback(lambda _: pump.stop())
        user = call.auth.username
        _log.info("{user} requested building image for stream: {stream}", user=user, stream=stream)
        log.line(f"Building: {stream} for: {user}")
        try:
            result = await self.builder.build(stream, options, user, log)
        finally:
            if pump is not None:
                pump.finish()
        image = image_to_json(result.image) if result.image is not None else None
        call.send_json(
            build_response(
                image=image,
                image_name="" if result.error or image is not None else result.image_name,
                build_log=None if streaming else result.log,
                error=result.error,
                result=result,
            )
        )

    async def _check_build_request(self, auth: CallAuth, request: dict[str, Any]) -> None:
        """Reference §2.4, in order; raises ``BuildError`` with the Go texts."""
        builder, limits = self.builder, self.limits
        until = builder.build_requests_disabled_until()
        if until is not None:
            left = format_duration(until - self.clock.seconds())
            raise BuildError(f"builds disabled until {format_time(until)} (for {left})")
        expires_in = request["ExpiresIn"] / NS
        if expires_in < limits.minimum:
            raise BuildError(f"minimum expiration duration is {format_duration(limits.minimum)}")
        if self.streams_loaded is not None:
            try:
                await self.streams_loaded().addTimeout(STREAMS_WAIT, self.clock)
            except Exception:
                raise BuildError("timed out waiting for streams list to load") from None
        stream = request["StreamName"]
        config = await builder.lookup(stream)
        if auth.have_method_access:
            if expires_in > limits.maximum_privileged:
                raise BuildError(
                    "maximum expiration time is "
                    f"{format_duration(limits.maximum_privileged)} for you"
                )
            return
        if expires_in > limits.maximum:
            raise BuildError(f"maximum expiration time is {format_duration(limits.maximum)}")
        if isinstance(config, BootstrapStream) or not (
            auth.username in config.builder_users or auth.groups & set(config.builder_groups)
        ):
            raise BuildError(f"no permission to build: {stream}")

    # -- request/reply methods ---------------------------------------------------------

    async def disable_auto_builds(self, call: Call) -> dict[str, Any]:
        request = decode_request(
            call.request, "imaginator.DisableAutoBuildsRequest", {"DisableFor": "duration"}
        )
        if self.auto is None:
            return {"DisabledUntil": _go_time(None), "Error": "auto builds not configured"}
        try:
            until = self.auto.disable(request["DisableFor"] / NS)
        except AutoBuildError as exc:
            return {"DisabledUntil": _go_time(None), "Error": str(exc)}
        _log.info(
            "{user} disabled auto builds until {until}",
            user=call.auth.username,
            until=format_time(until),
        )
        return {"DisabledUntil": _go_time(until), "Error": ""}

    async def disable_build_requests(self, call: Call) -> dict[str, Any]:
        request = decode_request(
            call.request, "imaginator.DisableBuildRequestsRequest", {"DisableFor": "duration"}
        )
        try:
            until = self.builder.disable_build_requests(request["DisableFor"] / NS)
        except BuildError as exc:
            return {"DisabledUntil": _go_time(None), "Error": str(exc)}
        return {"DisabledUntil": _go_time(until), "Error": ""}

    async def start_auto_builds(self, call: Call) -> dict[str, Any]:
        request = decode_request(
            call.request,
            "imaginator.StartAutoBuildsRequest",
            {"WaitForComplete": "bool", "WaitToStart": "bool"},
        )
        if self.auto is None:
            return {"Error": "auto builds not configured"}
        try:
            await self.auto.start(
                wait_to_start=request["WaitToStart"],
                wait_for_complete=request["WaitForComplete"],
            )
        except AutoBuildError as exc:
            return {"Error": str(exc)}
        return {"Error": ""}

    async def replace_idle_slaves(self, call: Call) -> dict[str, Any]:
        decode_request(
            call.request, "imaginator.ReplaceIdleSlavesRequest", {"ImmediateGetNew": "bool"}
        )
        return {"Error": "no SlaveDriver configured"}

    async def _dependencies(self, max_age_ns: int) -> DependencyData | None:
        if self.deps is None:
            return None
        return await self.deps.get(max_age_ns / NS)

    async def get_dependencies(self, call: Call) -> dict[str, Any]:
        request = decode_request(
            call.request, "imaginator.GetDependenciesRequest", {"MaxAge": "duration"}
        )
        data = await self._dependencies(request["MaxAge"])
        if data is None:
            return {
                "FetchLog": None,
                "GeneratedAt": _go_time(None),
                "LastAttemptAt": _go_time(None),
                "LastAttemptError": "",
                "StreamToSource": None,
                "UnbuildableSources": None,
                "Error": "",
            }
        return {
            "FetchLog": _b64(data.fetch_log.encode()),
            "GeneratedAt": _go_time(data.generated_at),
            "LastAttemptAt": _go_time(data.last_attempt_at),
            "LastAttemptError": data.last_attempt_error,
            "StreamToSource": dict(sorted(data.stream_to_source.items())),
            "UnbuildableSources": {name: {} for name in sorted(data.unbuildable_sources)},
            "Error": "",
        }

    async def get_directed_graph(self, call: Call) -> dict[str, Any]:
        request = decode_request(
            call.request,
            "imaginator.GetDirectedGraphRequest",
            {"Excludes": "strings", "Includes": "strings", "MaxAge": "duration"},
        )
        data = await self._dependencies(request["MaxAge"])
        if data is None:
            return {
                "FetchLog": None,
                "GeneratedAt": _go_time(None),
                "GraphvizDot": None,
                "LastAttemptAt": _go_time(None),
                "LastAttemptError": "",
                "Error": "",
            }
        dot = None
        if data.has_data:
            assert self.deps is not None  # the data came from it
            dot = graphviz_dot(
                data,
                request["Excludes"],
                request["Includes"],
                self.builder.auto_rebuild_streams(),
                bootstrap=self.deps.bootstrap_streams,
            ).encode()
        return {
            "FetchLog": _b64(data.fetch_log.encode()),
            "GeneratedAt": _go_time(data.generated_at),
            "GraphvizDot": _b64(dot),
            "LastAttemptAt": _go_time(data.last_attempt_at),
            "LastAttemptError": data.last_attempt_error,
            "Error": "",
        }
