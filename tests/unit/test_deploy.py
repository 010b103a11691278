"""The CPU's instruction sets, as /proc/cpuinfo names them, and the note for a quantised model where int8 is slow."""

from __future__ import annotations

from anomalib_faprompt.deploy import cpu_instruction_sets, int8_speed_note

# The first lines of /proc/cpuinfo on an AMD EPYC with AVX2 only and on an Intel Xeon with AMX (flags shortened).
AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni\n"


def test_the_instruction_sets_are_read_from_the_flags_line(tmp_path):
    (tmp_path / "avx2").write_text(AVX2_ONLY)
    (tmp_path / "amx").write_text(AMX)
    assert cpu_instruction_sets(tmp_path / "avx2") == ("avx2",)
    assert cpu_instruction_sets(tmp_path / "amx") == (
        "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
    )  # fmt: skip
    assert cpu_instruction_sets(tmp_path / "missing") is None


def test_a_quantised_model_is_noted_only_without_int8_dot_products():
    assert "no int8 dot-product instructions" in int8_speed_note(("avx2",))
    assert int8_speed_note(("avx2", "avx_vnni")) is None
    assert int8_speed_note(("avx2", "avx512f", "avx512_vnni")) is None
    assert int8_speed_note(None) is None  # unknown CPU: nothing said
