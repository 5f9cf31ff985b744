"""The engine: observe, plan and act for each group, journaling every mutating call.

Per pass and group: re-drive pending intents (same idempotency key), observe, compute the step
the rollout rules allow, then destroy and create. Every mutating call is bracketed by journal
writes: the intent before, the result after. ``boundary(point)`` is called at each side-effect
boundary so tests can crash the engine there.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provision.clock import Clock
from provision.errors import ProvisionError
from provision.reconcile.image import GroupImages
from provision.reconcile.journal import Intent, KnownInstance, ProviderRecord, Store
from provision.reconcile.logs import log_event
from provision.reconcile.metrics import Metrics
from provision.reconcile.model import Condition, Destruction, Machine, Observation, Step
from provision.reconcile.observe import Observer
from provision.reconcile.plan import (
    ClusterPlan,
    GroupPlan,
    MachineChange,
    describe_trigger,
    digest_observations,
    plan_group,
)
from provision.reconcile.provider import (
    REPLACING_REASONS,
    TAG_CLUSTER,
    TAG_CONFIG,
    TAG_EPOCH,
    TAG_GROUP,
    TAG_JOURNAL,
    TAG_SLOT,
    CreateRequest,
    Instance,
    OutcomeUnknownError,
    Provider,
    ProviderError,
    ProviderWrapper,
    StaleEpochError,
    TransientProviderError,
    destroy_for_reason,
)
from provision.reconcile.rollout import plan_step
from provision.reconcile.spec import ClusterSpec, GroupSpec, config_digest
from provision.reconcile.throttle import Backoff, RateLimiter

Boundary = Callable[[str], None]
REMOVED = "group removed from the spec"


class DestroyAllRefusedError(ProvisionError):
    """The spec removes every group of a cluster that still has machines (a truncated file?)."""


class ForeignJournalError(ProvisionError):
    """The cluster's machines were created through another journal."""


@dataclass
class PassResult:
    group: str
    created: int = 0
    destroyed: int = 0
    recovered: int = 0
    errors: list[str] = field(default_factory=list)
    converged: bool = False
    pages: int = 0
    notes: tuple[str, ...] = ()


class PacedProvider(ProviderWrapper):
    """Wraps a provider: every call waits for the provider's rate limit and is counted."""

    def __init__(
        self,
        inner: Provider,
        limiter: RateLimiter,
        metrics: Metrics | None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.limiter, self.metrics, self.guard = limiter, metrics, guard

    def before(self, op: str) -> None:
        self.limiter.acquire()
        if self.guard is not None and op != "list":
            self.guard()  # raises StaleEpochError when this daemon may no longer act (its lease's local deadline passed)
        if self.metrics is not None:
            self.metrics.inc("provision_provider_calls_total", provider=self.name, op=op)


class Engine:
    """Reconciles one cluster spec against its providers, through one journal."""

    def __init__(
        self,
        spec: ClusterSpec,
        providers: Mapping[str, Provider],
        store: Store,
        clock: Clock,
        *,
        owner: str = "engine",
        boundary: Boundary | None = None,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
        backoff: Backoff | None = None,
        grace: float = 300.0,
        images: GroupImages | Mapping[str, str] | None = None,
        allow_destroy_all: bool = False,
        adopt: bool = False,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.clock = clock
        self.owner = owner
        self.boundary = boundary or (lambda _point: None)
        self.stop = stop or threading.Event()
        self.metrics = metrics
        self.backoff = backoff or Backoff(clock)
        self.grace = grace
        self.epoch = 0  # the cluster's lease (or, sharded, this daemon's membership) token
        self.epochs: dict[str, int] = {}  # sharded: each owned group's own fencing token
        self.allow_destroy_all = allow_destroy_all
        self.adopt = adopt
        self.journal_id = store.identity()
        # Each group's image: built and published on first use unless the caller decides
        # (a plan passes GroupImages(build=False); fixed ids come as a mapping).
        if isinstance(images, GroupImages):
            self.images = images
        else:
            self.images = GroupImages(spec, providers, build=True, fixed=images)
        self._configs_written: set[str] = set()
        self._scope_created: dict[str, int] = {}  # creates made under a saved plan, per group
        self.providers: dict[str, PacedProvider] = {}
        for name, provider in providers.items():
            pspec = spec.providers.get(name)
            limiter = RateLimiter(clock, pspec.rate_limit if pspec else None)
            self.providers[name] = PacedProvider(provider, limiter, metrics, guard)

    # -- leadership ----------------------------------------------------------------------

    def epoch_of(self, group: str) -> int:
        """The fencing token of the group's journal writes and provider calls: the group's own
        when the daemon is sharded, else the cluster's."""
        return self.epochs.get(group, self.epoch)

    def acquire(self, ttl: float = 15.0) -> int:
        self.epoch = self.store.acquire_lease(self.spec.name, self.owner, ttl, self.clock.now())
        self._record_spec(self.spec)
        if self.metrics is not None:
            self.metrics.set("provision_leader_epoch", self.epoch)
        return self.epoch

    def renew(self, ttl: float = 15.0) -> None:
        self.store.renew_lease(self.spec.name, self.owner, self.epoch, ttl, self.clock.now())

    def release(self) -> None:
        self.store.release_lease(self.spec.name, self.owner, self.epoch)

    def _record_spec(self, spec: ClusterSpec) -> None:
        """Journal the spec as the desired state, and every provider it declares (so ``down``
        reaches them after they leave the spec); groups are recorded at their first create."""
        cluster = spec.name
        previous = self.store.desired(cluster)
        self.store.put_desired(cluster, spec.digest, spec.source_text, self.epoch)
        records = [
            ProviderRecord(p.name, p.type, p.rate_limit, dict(p.options), str(p.base.absolute()))
            for p in spec.providers.values()
        ]
        # Journals written before groups were recorded: the groups that had intents.
        known = set(self.store.groups_seen(cluster))
        legacy = self.store.groups_with_intents(cluster) - known
        groups = {g.name: g.provider for g in spec.groups if g.name in legacy}
        if previous is not None and legacy - set(groups):
            from provision.reconcile.spec import parse_cluster_spec

            try:
                old = parse_cluster_spec(previous[1], "<journal>")
            except ProvisionError:
                old = None
            if old is not None:
                groups.update(
                    {
                        g.name: g.provider
                        for g in old.groups
                        if g.name in legacy and g.name not in groups
                    }
                )
        self.store.record_cluster(cluster, groups, records, self.epoch)

    # -- groups the spec no longer has --------------------------------------------------------

    def removed_groups(self) -> tuple[GroupSpec, ...]:
        """Groups the journal has made machines for that the spec no longer declares: each is
        kept at size 0 (its machines destroyed through the journal) until it is empty."""
        declared = {g.name for g in self.spec.groups}
        return tuple(
            GroupSpec(name, provider, "", size=0)
            for name, provider in sorted(self.store.groups_seen(self.spec.name).items())
            if name not in declared
        )

    def groups(self) -> tuple[GroupSpec, ...]:
        """The spec's groups, then the removed ones."""
        return self.spec.groups + self.removed_groups()

    def is_removed(self, group: GroupSpec) -> bool:
        return all(g.name != group.name for g in self.spec.groups)

    def destroy_all_refusal(self, spec: ClusterSpec | None = None) -> str:
        """Why acting on ``spec`` (default: the engine's) would be refused: it removes every group
        of the cluster that still has machines, and destroying all was not allowed. '' if not."""
        spec = spec or self.spec
        if self.allow_destroy_all:
            return ""
        seen = self.store.groups_seen(spec.name)
        declared = {g.name for g in spec.groups}
        if not seen or declared & set(seen):
            return ""
        busy = []
        for name, provider in sorted(seen.items()):
            if provider not in self.providers:
                busy.append(name)  # cannot look: assume it has machines
                continue
            observation = Observer(
                spec.name, self.providers[provider], self.store, self.clock, self.grace
            ).observe(GroupSpec(name, provider, "", size=0))
            if observation.machines:
                busy.append(
                    f"{name} ({len(observation.machines)} machine{'s' if len(observation.machines) != 1 else ''})"
                )
        if not busy:
            return ""
        return (
            f"the spec removes every group of cluster {spec.name!r} that has machines: {', '.join(busy)}; "
            "refusing to destroy them all (a truncated or wrong file?)"
        )

    def check_destroy_all(self) -> None:
        reason = self.destroy_all_refusal()
        if reason:
            raise DestroyAllRefusedError(
                reason,
                hint="fix the spec, or run `provision apply --allow-destroy-all` (or `provision down`) to remove them",
            )

    def _check_journal(self, group: GroupSpec, observation: Observation) -> None:
        """Refuse machines another journal made, unless told to adopt them (then remember that)."""
        foreign = {
            m.journal for m in observation.machines if m.journal and m.journal != self.journal_id
        }
        foreign -= self.store.adopted_journals(self.spec.name)
        if not foreign:
            return
        if not self.adopt:
            raise ForeignJournalError(
                f"group {group.name}: machines of cluster {self.spec.name!r} were created through another journal "
                f"({', '.join(sorted(foreign))}; this one is {self.journal_id})",
                hint="use the journal that manages them (--journal), or take them over with --adopt",
            )
        self.store.adopt_journals(self.spec.name, foreign, self.epoch_of(group.name))
        log_event(
            "adopted",
            cluster=self.spec.name,
            group=group.name,
            journals=sorted(foreign),
            journal=self.journal_id,
        )

    # -- desired state -------------------------------------------------------------------

    def desired(self, group: GroupSpec) -> tuple[str, str]:
        """(image id, config digest) the group's machines should have ('', '' for a removed group)."""
        if self.is_removed(group):
            return "", ""
        image = self.images.image(group).id
        config = config_digest(image, group.properties)
        if config not in self._configs_written:
            self.store.put_config(config, image, dict(group.properties))
            self._configs_written.add(config)
        return image, config

    def observer(self, group: GroupSpec) -> Observer:
        return Observer(
            self.spec.name, self.providers[group.provider], self.store, self.clock, self.grace
        )

    def observe(self, group: GroupSpec) -> Observation:
        return self.observer(group).observe(group)

    def plan(self) -> ClusterPlan:
        every = self.groups()
        observations = [self.observe(g) for g in every]
        groups = tuple(
            self.plan_observed(g, o)
            for g, o in zip(every, observations, strict=True)
            if o.machines or not self.is_removed(g)
        )
        refusal = self.destroy_all_refusal()
        if refusal:
            note = f"{refusal}: apply refuses without --allow-destroy-all, the daemon refuses"
            groups = tuple(
                dataclasses.replace(g, notes=(*g.notes, note)) if g.removed else g for g in groups
            )
        return ClusterPlan(
            self.spec.name,
            _resolved(self.spec.source_file),
            self.spec.digest,
            self.spec.source_text,
            digest_observations(observations),
            groups,
        )

    def plan_observed(self, group: GroupSpec, observation: Observation) -> GroupPlan:
        image, config = self.desired(group)

        def trigger(m: Machine) -> str:
            return describe_trigger(m, image, group.properties, self.store.config)

        if self.is_removed(group):
            return plan_removed_group(group, observation)
        plan = plan_group(group, image, config, observation, trigger)
        note = self.images.image(group).note()
        plan = dataclasses.replace(plan, notes=(note, *plan.notes)) if note else plan
        foreign = sorted(
            {m.journal for m in observation.machines if m.journal and m.journal != self.journal_id}
            - self.store.adopted_journals(self.spec.name)
        )
        if foreign:
            note = f"machines created through another journal ({', '.join(foreign)}): apply and the daemon refuse them without --adopt"
            plan = dataclasses.replace(plan, notes=(*plan.notes, note))
        return plan

    # -- one pass --------------------------------------------------------------------------

    def reconcile(self, scope: ClusterPlan | None = None) -> list[PassResult]:
        self.check_destroy_all()
        return [self.reconcile_group(g, scope) for g in self.groups()]

    def reconcile_group(self, group: GroupSpec, scope: ClusterPlan | None = None) -> PassResult:
        started = time.monotonic()
        result = PassResult(group.name)
        provider = self.providers.get(group.provider)
        if provider is None:  # a removed group whose provider is not reachable from here
            result.errors.append(
                f"provider {group.provider!r} of group {group.name} is not available"
            )
            return result
        removed = self.is_removed(group)
        image, config = self.desired(group)
        try:
            result.recovered = self._recover(group, provider, result)
            observation = self.observe(group)
            result.pages = observation.pages
            self._check_journal(group, observation)
            allowed: set[str] | None = None
            budget: int | None = None
            if scope is not None:
                allowed, planned = scope.scope(group.name)
                budget = planned - self._scope_created.get(group.name, 0)
            if removed:
                step = step_removed_group(observation.machines, allowed)
            else:
                step = plan_step(
                    group, config, observation.machines, allowed=allowed, create_budget=budget
                )
            result.notes = step.notes
            freed = 0
            for destruction in step.destroys:
                if self.stop.is_set():
                    break
                if self._destroy(
                    group.name, provider, destruction.machine, destruction.reason, result
                ):
                    freed += 1
            for creation in step.creates[: max(0, step.room + freed)]:
                if self.stop.is_set() or not self.backoff.ready(f"{group.name}:create"):
                    break
                if not self._create(
                    group, provider, image, config, creation.slot, creation.reason, result
                ):
                    break
            self._scope_created[group.name] = (
                self._scope_created.get(group.name, 0) + result.created
            )
            self._record(group, config, observation, result)
            if removed:
                result.converged = (
                    not observation.machines and not result.errors and not result.created
                )
                if (
                    result.converged
                    and self.epoch_of(group.name)
                    and not self.store.pending_intents(self.spec.name, group.name)
                ):
                    self.store.retire_group(self.spec.name, group.name, self.epoch_of(group.name))
                    log_event(
                        "group-retired",
                        cluster=self.spec.name,
                        group=group.name,
                        note="its machines are gone",
                    )
                return self._count_pass(group, result, started)
            result.converged = (
                step.empty
                and not result.errors
                and not any(m.id is None for m in observation.machines)
                and len(observation.machines) == group.desired
                and all(
                    m.config == config and m.condition is Condition.AVAILABLE
                    for m in observation.machines
                )
                and not self.store.pending_intents(
                    self.spec.name, group.name
                )  # e.g. a timed-out destroy to re-drive
            )
        except StaleEpochError:
            raise
        except TransientProviderError as exc:
            result.errors.append(f"list: {exc}")
            self.backoff.failed(f"{group.name}:list", exc.retry_after)
        return self._count_pass(group, result, started)

    def _count_pass(self, group: GroupSpec, result: PassResult, started: float) -> PassResult:
        if self.metrics is not None:
            self.metrics.inc("provision_reconcile_passes_total", group=group.name)
            self.metrics.inc(
                "provision_pass_seconds_sum", time.monotonic() - started, group=group.name
            )
        return result

    def _record(
        self, group: GroupSpec, config: str, observation: Observation, result: PassResult
    ) -> None:
        if self.metrics is None:
            return
        machines = observation.machines
        m = self.metrics
        m.set("provision_group_desired", group.desired, group=group.name)
        m.set("provision_group_observed", len(machines), group=group.name)
        m.set(
            "provision_group_available",
            sum(1 for x in machines if x.condition is Condition.AVAILABLE),
            group=group.name,
        )
        m.set(
            "provision_group_up_to_date",
            sum(1 for x in machines if x.config == config),
            group=group.name,
        )

    # -- the journaled mutations ------------------------------------------------------------

    def _recover(self, group: GroupSpec, provider: Provider, result: PassResult) -> int:
        """Re-drive intents left pending by a crash or a failed call: same key, same request."""
        done = 0
        for intent in self.store.pending_intents(self.spec.name, group.name):
            item = f"{group.name}:intent:{intent.key}"
            if self.stop.is_set() or not self.backoff.ready(item):
                continue
            try:
                if intent.op == "create":
                    body = json.loads(intent.request)
                    request = CreateRequest(
                        body["key"],
                        body["name"],
                        body["image"],
                        body["properties"],
                        body["tags"],
                        self.epoch_of(group.name),
                    )
                    instance = provider.create_instance(request)
                    self.boundary("create:call-returned")
                    self.store.finish_create(
                        intent.key,
                        _known(group, intent.slot, intent.config, request, instance),
                        self.epoch_of(group.name),
                    )
                else:
                    assert intent.instance_id is not None
                    destroy_for_reason(
                        provider,
                        intent.instance_id,
                        self.epoch_of(group.name),
                        replacing=self._replacing(group.name, intent.reason),
                    )
                    self.boundary("destroy:call-returned")
                    self.store.finish_destroy(
                        intent.key, intent.instance_id, self.clock.now(), self.epoch_of(group.name)
                    )
                self.boundary(f"{intent.op}:result-written")
            except StaleEpochError:
                raise
            except TransientProviderError as exc:
                self._failed(group.name, item, intent.op, exc, result)
                continue
            except ProviderError as exc:
                self.store.abandon_intent(intent.key, str(exc), self.epoch_of(group.name))
                self._failed(group.name, item, intent.op, exc, result)
                continue
            self.backoff.succeeded(item)
            log_event(
                "recovered", cluster=self.spec.name, group=group.name, op=intent.op, key=intent.key
            )
            done += 1
        return done

    def _create(
        self,
        group: GroupSpec,
        provider: Provider,
        image: str,
        config: str,
        slot: str,
        reason: str,
        result: PassResult,
    ) -> bool:
        cluster = self.spec.name
        seq = self.store.next_sequence(cluster, group.name, self.epoch_of(group.name))
        slot = slot or f"{seq:05d}"
        key = f"{cluster}/{group.name}/{slot}/{seq}"
        name = f"{cluster}-{group.name}-{slot}" + (f"-{seq}" if group.members is not None else "")
        tags = {
            TAG_CLUSTER: cluster,
            TAG_GROUP: group.name,
            TAG_SLOT: slot,
            TAG_CONFIG: config,
            TAG_EPOCH: str(self.epoch_of(group.name)),
            TAG_JOURNAL: self.journal_id,
        }
        request = CreateRequest(
            key, name, image, dict(group.properties), tags, self.epoch_of(group.name)
        )
        body = {
            "key": key,
            "name": name,
            "image": image,
            "properties": dict(group.properties),
            "tags": tags,
        }
        intent = Intent(
            key,
            cluster,
            group.name,
            "create",
            slot,
            None,
            config,
            reason,
            json.dumps(body, default=str),
            self.clock.now(),
        )
        if group.name not in self.store.groups_seen(cluster):
            self.store.record_cluster(
                cluster, {group.name: group.provider}, [], self.epoch_of(group.name)
            )
        self.store.begin_intents([intent], self.epoch_of(group.name))
        self.boundary("create:intent-written")
        item = f"{group.name}:create"
        try:
            instance = provider.create_instance(request)
        except StaleEpochError:
            raise
        except TransientProviderError as exc:
            self._failed(
                group.name, item, "create", exc, result
            )  # the intent stays pending: re-driven
            return False
        except ProviderError as exc:
            self.store.abandon_intent(key, str(exc), self.epoch_of(group.name))
            self._failed(group.name, item, "create", exc, result)
            return False
        self.boundary("create:call-returned")
        self.store.finish_create(
            key, _known(group, slot, config, request, instance), self.epoch_of(group.name)
        )
        self.boundary("create:result-written")
        self.backoff.succeeded(item)
        result.created += 1
        if self.metrics is not None:
            self.metrics.inc("provision_machines_created_total", group=group.name)
        log_event(
            "created",
            cluster=cluster,
            group=group.name,
            slot=slot,
            instance=instance.id,
            key=key,
            reason=reason,
            epoch=self.epoch_of(group.name),
        )
        return True

    def destroy_instance(self, provider_name: str, instance: Instance, reason: str) -> PassResult:
        """Destroy one machine carrying this cluster's tag (``down``'s sweep of stopped machines
        and machines of groups nobody declares any more), through the journal like every other."""
        group = instance.tags.get(TAG_GROUP, "")
        result = PassResult(group)
        if instance.tags.get(TAG_CLUSTER) != self.spec.name:
            raise ProvisionError(
                f"{instance.id} does not carry the tag of cluster {self.spec.name!r}; not touching it"
            )
        journal = instance.tags.get(TAG_JOURNAL, "")
        if (
            journal
            and journal != self.journal_id
            and journal not in self.store.adopted_journals(self.spec.name)
        ):
            if not self.adopt:
                raise ForeignJournalError(
                    f"{instance.id} of cluster {self.spec.name!r} was created through another journal ({journal}; this one is {self.journal_id})",
                    hint="use the journal that manages it (--journal), or take it over with --adopt",
                )
            self.store.adopt_journals(self.spec.name, [journal], self.epoch_of(group))
        if (
            group
            and group not in self.store.groups_seen(self.spec.name)
            and all(g.name != group for g in self.spec.groups)
        ):
            # a group no journal knew: from now on a removed group, so a destroy left pending is re-driven
            self.store.record_cluster(
                self.spec.name, {group: provider_name}, [], self.epoch_of(group)
            )
        machine = Machine(
            instance.id,
            instance.name,
            instance.slot,
            instance.config,
            instance.image,
            instance.created_at,
            Condition.FAILED,
        )
        self._destroy(group, self.providers[provider_name], machine, reason, result)
        return result

    def _replacing(self, group: str, reason: str) -> bool:
        """Whether a destroy for ``reason`` makes room for a new machine of ``group`` (a re-image,
        rolling or remediating) rather than taking the machine out of the group."""
        spec = next((g for g in self.spec.groups if g.name == group), None)
        return reason in REPLACING_REASONS and spec is not None and spec.desired > 0

    def _destroy(
        self, group: str, provider: Provider, machine: Machine, reason: str, result: PassResult
    ) -> bool:
        assert machine.id is not None
        item = f"{group}:destroy:{machine.id}"
        if not self.backoff.ready(item):
            return False
        key = f"{self.spec.name}/{group}/destroy/{machine.id}/{self.epoch_of(group)}"
        intent = Intent(
            key,
            self.spec.name,
            group,
            "destroy",
            machine.slot,
            machine.id,
            machine.config,
            reason,
            "",
            self.clock.now(),
        )
        self.store.begin_intents([intent], self.epoch_of(group))
        self.boundary("destroy:intent-written")
        try:
            destroy_for_reason(
                provider,
                machine.id,
                self.epoch_of(group),
                replacing=self._replacing(group, reason),
            )
        except StaleEpochError:
            raise
        except TransientProviderError as exc:
            self._failed(group, item, "destroy", exc, result)
            return False
        except ProviderError as exc:
            self.store.abandon_intent(key, str(exc), self.epoch_of(group))
            self._failed(group, item, "destroy", exc, result)
            return False
        self.boundary("destroy:call-returned")
        self.store.finish_destroy(key, machine.id, self.clock.now(), self.epoch_of(group))
        self.boundary("destroy:result-written")
        self.backoff.succeeded(item)
        result.destroyed += 1
        if self.metrics is not None:
            self.metrics.inc("provision_machines_destroyed_total", group=group, reason=reason)
        log_event(
            "destroyed",
            cluster=self.spec.name,
            group=group,
            slot=machine.slot,
            instance=machine.id,
            reason=reason,
            epoch=self.epoch_of(group),
        )
        return True

    def _failed(
        self, group: str, item: str, op: str, exc: ProviderError, result: PassResult
    ) -> None:
        retry_after = exc.retry_after if isinstance(exc, TransientProviderError) else None
        delay = self.backoff.failed(
            item, retry_after if not isinstance(exc, OutcomeUnknownError) else None
        )
        result.errors.append(f"{op}: {exc}")
        if self.metrics is not None:
            self.metrics.inc("provision_reconcile_errors_total", group=group, op=op)
        log_event(
            "call-failed",
            cluster=self.spec.name,
            group=group,
            op=op,
            error=str(exc),
            retry_in=round(delay, 3),
        )

    # -- until done -----------------------------------------------------------------------------

    def converge(
        self,
        *,
        max_passes: int = 1000,
        scope: ClusterPlan | None = None,
        between: Callable[[int], None] | None = None,
    ) -> int:
        """Run passes until every group converges (or a scoped plan is exhausted); return the
        number of passes. ``between(n)`` runs after pass n (tests advance the clock there)."""
        for n in range(1, max_passes + 1):
            results = self.reconcile(scope)
            if all(r.converged for r in results) or self.stop.is_set():
                return n
            if scope is not None and _scope_done(self, scope, results):
                return n
            if between is not None:
                between(n)
        return max_passes


def _scope_done(engine: Engine, scope: ClusterPlan, results: list[PassResult]) -> bool:
    """A saved plan is done when nothing it names is left and no call is in flight."""
    if any(r.errors or r.created or r.destroyed or r.recovered for r in results):
        return False
    if engine.store.pending_intents(engine.spec.name):
        return False
    for group in engine.groups():
        ids, planned = scope.scope(group.name)
        observation = engine.observe(group)
        if any(m.id in ids for m in observation.machines):
            return False
        if (
            engine._scope_created.get(group.name, 0) < planned
            and len(observation.machines) < group.desired
        ):
            return False  # planned creates still to come (a pass can skip them while they back off)
        if any(m.condition is Condition.STARTING for m in observation.machines):
            return False
    return True


def _resolved(source_file: str) -> str:
    """The spec's path as it resolves from anywhere (a saved plan is applied from any directory)."""
    return source_file if source_file.startswith("<") else str(Path(source_file).resolve())


def step_removed_group(machines: tuple[Machine, ...], allowed: set[str] | None) -> Step:
    """A group the spec no longer declares: every machine goes (no floor: nobody wants them)."""
    destroys = tuple(
        Destruction(m, REMOVED)
        for m in machines
        if m.id is not None and not m.deleting and (allowed is None or m.id in allowed)
    )
    return Step(destroys, (), 0)


def plan_removed_group(group: GroupSpec, observation: Observation) -> GroupPlan:
    changes = tuple(
        MachineChange(
            "destroy",
            m.slot,
            m.ref,
            REMOVED if not m.deleting else "destroy in flight (re-driven)",
            m.config,
            "",
        )
        for m in observation.machines
    )
    return GroupPlan(
        group.name, group.provider, "-", "", 0, len(observation.machines), changes, (), removed=True
    )


def _known(
    group: GroupSpec, slot: str, config: str, request: CreateRequest, instance: Instance
) -> KnownInstance:
    return KnownInstance(
        instance.id,
        group.name,
        slot,
        config,
        instance.image or request.image,
        instance.name or request.name,
        request.key,
        instance.created_at,
        None,
    )
