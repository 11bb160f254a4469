"""setup.cfg ships every package: an installed genjax must import from anywhere."""

import configparser
import os

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_source_folder_is_a_shipped_package():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  include = cfg["options.packages.find"]["include"].split()
  found = set(setuptools.find_packages(ROOT, include=include))
  expected = set()
  for top in ("genjax", "experiments", "configs"):
    for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      if any(f.endswith(".py") for f in files):
        expected.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
  assert expected <= found, sorted(expected - found)
