"""Run by tests/codegen/test_realworld.py with the generated googleapis code on its path:
real endpoints and a real hub (ZeroMQ over ipc) serving two googleapis services whose
rpcs share request types. Prints one line per check; exits non-zero on a failure."""

from __future__ import annotations

import asyncio
import sys

import ackbus
from google.logging.v2 import logging_config_ackbus as logging_gen
from google.logging.v2 import logging_config_pb2 as logging_pb
from google.longrunning import operations_pb2
from google.monitoring.v3 import metric_service_ackbus as metric_gen
from google.monitoring.v3 import metric_service_pb2 as metric_pb

SEEN: list[tuple[str, str, str]] = []


class Series(metric_gen.MetricServiceHandler):
    """Runs CreateTimeSeries alone (in service "series")."""

    async def on_create_time_series(
        self, msg: metric_pb.CreateTimeSeriesRequest, ctx: ackbus.Context
    ) -> None:
        SEEN.append(("series", "CreateTimeSeries", msg.name))


class ServiceSeries(metric_gen.MetricServiceHandler):
    """Runs CreateServiceTimeSeries alone (in service "service-series"): the hub routes
    each message by the rpc it names."""

    async def on_create_service_time_series(
        self, msg: metric_pb.CreateTimeSeriesRequest, ctx: ackbus.Context
    ) -> None:
        SEEN.append(("service-series", "CreateServiceTimeSeries", msg.name))


class Buckets(logging_gen.ConfigServiceV2Handler):
    async def on_create_bucket(
        self, msg: logging_pb.CreateBucketRequest, ctx: ackbus.Context
    ) -> logging_pb.LogBucket:
        return logging_pb.LogBucket(name=f"{msg.parent}/buckets/{msg.bucket_id}")

    async def on_create_bucket_async(
        self, msg: logging_pb.CreateBucketRequest, ctx: ackbus.Context
    ) -> operations_pb2.Operation:
        return operations_pb2.Operation(name=f"operations/create-{msg.bucket_id}")


async def main(address: str) -> None:
    async with (
        ackbus.Hub([address], heartbeat=0.2),
        ackbus.Endpoint("series", [address], heartbeat=0.2) as series,
        ackbus.Endpoint("service-series", [address], heartbeat=0.2) as service_series,
        ackbus.Endpoint("logging", [address], heartbeat=0.2) as logging,
        ackbus.Endpoint("caller", [address], heartbeat=0.2) as caller,
    ):
        series.register(Series())
        service_series.register(ServiceSeries())
        logging.register(Buckets())
        for each in (series, service_series, logging):
            await each.start()
        client = metric_gen.MetricServiceClient(caller)
        for report in (
            await client.send_create_time_series(name="projects/a", timeout=10),
            await client.send_create_service_time_series(name="projects/b", timeout=10),
        ):
            report.raise_for_status()
        print("metric handlers:", SEEN)
        assert SEEN == [
            ("series", "CreateTimeSeries", "projects/a"),
            ("service-series", "CreateServiceTimeSeries", "projects/b"),
        ]

        config = logging_gen.ConfigServiceV2Client(caller)
        bucket = await config.request_create_bucket(parent="projects/p", bucket_id="b1", timeout=10)
        operation = await config.request_create_bucket_async(
            parent="projects/p", bucket_id="b2", timeout=10
        )
        print("logging replies:", bucket.name, operation.name)
        assert bucket.name == "projects/p/buckets/b1"
        assert operation.name == "operations/create-b2"

        # The dynamic send: the type alone does not say which rpc; it fails at once.
        try:
            await caller.send(metric_pb.CreateTimeSeriesRequest(name="x"), timeout=10)
        except ackbus.AmbiguousMethod as exc:
            print("ambiguous:", exc.candidates)
            print("message:", exc)
        else:
            raise AssertionError("an ambiguous dynamic send was sent")
        chosen = "google.monitoring.v3.MetricService/CreateServiceTimeSeries"
        report = await caller.send(
            metric_pb.CreateTimeSeriesRequest(name="projects/c"), method=chosen, timeout=10
        )
        report.raise_for_status()
        assert SEEN[-1] == ("service-series", "CreateServiceTimeSeries", "projects/c"), SEEN
        print("dynamic send with method=:", SEEN[-1])


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
