"""compilation_cache: where the commands' persistent cache lives, and how it is switched off."""
import argparse
import pathlib

import jax
import pytest

from jaxdepth import compilation_cache as cc
from jaxdepth.train import command


@pytest.fixture
def jax_cache_settings():
  """JAX's cache settings as a test found them, put back after it."""
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
  saved = {n: getattr(jax.config, n) for n in names}
  yield
  for n, v in saved.items():
    jax.config.update(n, v)


@pytest.mark.parametrize("value", ["off", "0", "False", " no ", ""])
def test_the_variable_switches_the_cache_off(value):
  assert cc.directory({cc.ENV: value}) is None


def test_the_variable_names_the_directory(tmp_path):
  assert cc.directory({cc.ENV: str(tmp_path)}) == tmp_path


def test_default_is_the_user_cache_unless_jax_has_one(jax_cache_settings, tmp_path):
  jax.config.update("jax_compilation_cache_dir", None)
  assert cc.directory({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxdepth" / "jax"
  assert cc.directory({}) == pathlib.Path("~/.cache/jaxdepth/jax").expanduser()
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
  assert cc.directory({"XDG_CACHE_HOME": "/elsewhere"}) == tmp_path / "jax"
  jax.config.update("jax_enable_compilation_cache", False)
  assert cc.directory({}) is None
  assert cc.directory({cc.ENV: str(tmp_path)}) == tmp_path   # the variable wins


def test_enable_caches_every_computation_and_none_switches_off(jax_cache_settings, tmp_path):
  assert cc.enable(tmp_path / "c") == tmp_path / "c"
  assert jax.config.jax_enable_compilation_cache
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
  assert cc.enable(None) is None and not jax.config.jax_enable_compilation_cache


@pytest.mark.parametrize("flags, expected", [
    (["--compilation-cache", "DIR"], "DIR"), (["--no-compilation-cache"], None), ([], "default")])
def test_command_flags_win_over_the_environment(jax_cache_settings, monkeypatch, tmp_path, flags,
                                                expected):
  monkeypatch.setenv(cc.ENV, str(tmp_path / "default"))
  monkeypatch.setenv("JAXDEPTH_KEEP_HOST_MEMORY", "0")
  parser = argparse.ArgumentParser()
  command.add_launch_arguments(parser)
  args = parser.parse_args([f.replace("DIR", str(tmp_path / "DIR")) for f in flags])
  command.set_up_runtime(args)
  if expected is None:
    assert not jax.config.jax_enable_compilation_cache
  else:
    assert jax.config.jax_enable_compilation_cache
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / expected)


def test_a_cache_directory_that_cannot_be_made_is_one_warning_and_no_cache(
    jax_cache_settings, monkeypatch, tmp_path, capsys):
  monkeypatch.setenv("JAXDEPTH_KEEP_HOST_MEMORY", "0")
  (tmp_path / "a_file").write_text("")
  parser = argparse.ArgumentParser()
  command.add_launch_arguments(parser)
  command.set_up_runtime(parser.parse_args(["--compilation-cache",
                                            str(tmp_path / "a_file" / "cache")]))
  assert not jax.config.jax_enable_compilation_cache
  assert capsys.readouterr().err.splitlines() == [
      f"warning: the compilation cache {tmp_path / 'a_file' / 'cache'} cannot be used "
      f"({str(tmp_path / 'a_file')!r} is a file, not a directory); compiling without it "
      f"(--compilation-cache DIR puts it elsewhere)"]
