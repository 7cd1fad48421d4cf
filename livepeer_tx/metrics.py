# -*- test-case-name: tests.test_admission,tests.test_http_hardening,tests.test_hostile_transcoder -*-
"""
Prometheus metrics, with go-livepeer's names where one exists.

Each process builds its own registry so tests can run several in one process.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

_TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 20, 30)


def addScrapedGauge(registry, name, documentation, read):
    """
    Add to C{registry} a gauge whose value is C{read()} at each scrape, so
    that it can never drift from the object it describes.
    """
    Gauge(name, documentation, registry=registry).set_function(read)


class OrchestratorMetrics:
    """
    The orchestrator's metrics. Gauges about transcoders are read from the pool
    when scraped, so they can never drift from it.
    """

    def __init__(self, pool, registry=None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        addScrapedGauge(r, "livepeer_transcoders_number", "Registered transcoders", lambda: len(pool.transcoders))
        addScrapedGauge(r, "livepeer_transcoders_capacity", "Sum of the transcoders' capacities",
                     lambda: pool.totalCapacity)
        addScrapedGauge(r, "livepeer_transcoders_load", "Sessions assigned to transcoders", lambda: pool.totalLoad)
        addScrapedGauge(r, "livepeer_max_sessions_total", "Current session limit", lambda: pool.sessionLimit)
        addScrapedGauge(r, "livepeer_current_sessions_total", "Sessions now", lambda: pool.sessionCount)
        addScrapedGauge(r, "livepeer_transcoders_cooling_off", "Transcoders out of rotation after repeated failures",
                     lambda: pool.coolingOffCount)
        r.register(_TranscoderFailures(pool))
        self.segmentsReceived = Counter(
            "livepeer_segment_source_emerged_unprocessed", "Segments received from gateways", registry=r)
        self.segmentsTranscoded = Counter(
            "livepeer_segment_transcoded", "Segments transcoded and answered", registry=r)
        self.segmentsFailed = Counter(
            "livepeer_segment_transcode_failed", "Segments that could not be transcoded", ["reason"], registry=r)
        self.segmentsRejected = Counter(
            "livepeer_segment_rejected", "Segments refused before transcoding, by reason", ["reason"],
            registry=r)
        self.segmentsRetried = Counter(
            "livepeer_transcode_retried", "Segments moved to another transcoder after a failure", registry=r)
        self.transcodeSeconds = Histogram(
            "livepeer_transcode_time_seconds", "Time from dispatch to renditions back", buckets=_TIME_BUCKETS,
            registry=r)
        self.overheadSeconds = Histogram(
            "livepeer_orchestrator_overhead_seconds",
            "Per segment: dispatch to answer ready, minus the transcoder's own FFmpeg time",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=r)
        self.pixelsProcessed = Counter(
            "livepeer_pixels_processed", "Encoded pixels returned to gateways", registry=r)
        self.registrationsRefused = Counter(
            "livepeer_transcoder_registrations_refused", "Refused transcoder registrations", ["reason"], registry=r)


class ChainMetrics:
    """
    An on-chain orchestrator's reward, payment and redemption metrics, in
    the node's registry (served by its C{/metrics}).

    @ivar lastRewardRound: the last round reward was called for.
    @ivar rewardCallErrors: failed attempts to call reward.
    @ivar ethBalance: the account's ETH balance in wei.
    @ivar ticketsReceived: payment tickets received.
    @ivar winningTicketsReceived: winning tickets received.
    @ivar paymentErrors: refused payments.
    @ivar valueRedeemed: wei received from redeemed winning tickets.
    @ivar redemptionErrors: failed ticket redemptions.
    """

    def __init__(self, registry=None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.lastRewardRound = Gauge(
            "livepeer_last_reward_round", "The last round for which reward was called (from the chain)",
            registry=r)
        self.rewardCallErrors = Counter("livepeer_reward_call_errors", "Failed attempts to call reward", registry=r)
        self.ethBalance = Gauge(
            "livepeer_eth_balance_wei", "ETH balance of the orchestrator account, in wei", registry=r)
        self.ticketsReceived = Counter("livepeer_tickets_recv", "Payment tickets received", registry=r)
        self.winningTicketsReceived = Counter(
            "livepeer_winning_tickets_recv", "Winning tickets received", registry=r)
        self.paymentErrors = Counter("livepeer_payment_recv_errors", "Refused payments", registry=r)
        self.valueRedeemed = Counter(
            "livepeer_value_redeemed", "Wei received from redeemed winning tickets", registry=r)
        self.redemptionErrors = Counter(
            "livepeer_ticket_redemption_errors", "Failed ticket redemptions", registry=r)


class _TranscoderFailures:
    """
    C{livepeer_transcoder_failures_total{kind}}: failed task attempts, read
    from the pool's totals when scraped.
    """

    def __init__(self, pool):
        self._pool = pool

    def describe(self):
        """
        The metric this collector yields, for the registry.
        """
        return [CounterMetricFamily(
            "livepeer_transcoder_failures", "Failed task attempts on transcoders", labels=["kind"])]

    def collect(self):
        """
        The failure totals by kind, now.
        """
        family = CounterMetricFamily(
            "livepeer_transcoder_failures", "Failed task attempts on transcoders", labels=["kind"])
        for kind, count in self._pool.failureTotals.items():
            family.add_metric([kind], count)
        yield family


class TranscoderMetrics:
    """
    The transcoder's metrics.
    """

    def __init__(self, worker, registry=None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        addScrapedGauge(r, "livepeer_transcoder_sessions_capacity", "maxSessions", lambda: worker.maxSessions)
        addScrapedGauge(r, "livepeer_transcoder_running", "FFmpeg processes running", lambda: worker.running)
        addScrapedGauge(r, "livepeer_transcoder_queued", "Segments waiting for a free slot", lambda: worker.queued)
        self.segmentsTranscoded = Counter(
            "livepeer_segment_transcoded", "Segments transcoded", registry=r)
        self.segmentsFailed = Counter(
            "livepeer_segment_transcode_failed", "Segments that failed", registry=r)
        self.transcodeSeconds = Histogram(
            "livepeer_transcode_time_seconds", "FFmpeg wall time per segment", buckets=_TIME_BUCKETS, registry=r)
        self.pixelsProcessed = Counter(
            "livepeer_mil_pixels_processed", "Encoded pixels, in millions", registry=r)
