#!/usr/bin/env bash
# Everything a fresh machine needs: the CPU torch wheel first (pip finds it on disk,
# so the multi-GB CUDA build is never fetched), then the package with its dev,
# landmarks68 (dlib-bin and the 68-point predictor, about 100 MB) and ray (Ray, for
# `annotate --ray` and its tests on a local two-node cluster, an 80 MB wheel) extras,
# then the system tools the RTSP tests use (skipped where apt-get is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,landmarks68,ray]'
# RTSP test server (GStreamer, system python3-gi) and ffmpeg/ffprobe for the live tests;
# chromium loads report.html in tests/test_report.py (headless); mosquitto is the MQTT
# broker of tests/test_events.py;
# only as root with apt-get (CI runs as root); the tests skip with a reason without them.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
    gstreamer1.0-rtsp rtsp-server-perl chromium mosquitto
fi
