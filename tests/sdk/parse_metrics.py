"""Parses Prometheus text (stdin) with the reference client library's parser; prints the
samples as JSON [[name, labels, value], ...]. Any format error raises and exits non-zero."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
print(json.dumps(samples))
