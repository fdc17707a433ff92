"""Packaging for the pipeline: `pip install .` locally, `--setup_file ./setup.py` for remote Beam workers."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="perf-classifier-pipeline",
    version="0.1.0",
    description="Beam pipeline: Kafka perf/log events -> classified, windowed metrics -> Kafka + ClickHouse",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    package_data={"pipeline": ["../rules/*.yaml", "../config/*.yaml", "../sql/*.sql"]},
    python_requires=">=3.11",
    install_requires=requirements,
    entry_points={"console_scripts": ["perf-pipeline=pipeline.cli:main_entry"]},
)
