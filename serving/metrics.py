"""The service's Prometheus figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.holder import ServedIndex


class ServiceMetrics:
    """Prometheus figures of one app (its own registry, so several apps can live in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vsearch_requests_total", "Requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vsearch_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.embed_seconds = Histogram("vsearch_embed_seconds", "Time to embed a query image",
                                       registry=self.registry)
        self.index_size = Gauge("vsearch_index_vectors", "Vectors in the live index",
                                registry=self.registry)
        self.index_info = Gauge("vsearch_index_info", "The live index version",
                                ["version", "index_type", "model"], registry=self.registry)
        self.errors = Counter("vsearch_errors_total", "Requests answered with an error",
                              ["endpoint", "kind"], registry=self.registry)
        self.cache = Counter("vsearch_query_cache_total", "Query embeddings found in the cache or not",
                             ["outcome"], registry=self.registry)

    def index_changed(self, served: ServedIndex | None) -> None:
        self.index_info.clear()
        if served is None:
            return
        build = served.searcher.loaded.build
        self.index_size.set(build["count"])
        self.index_info.labels(build["version"], build["params"]["index_type"],
                               build["model_key"]).set(1)
