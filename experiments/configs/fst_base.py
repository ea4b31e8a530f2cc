"""Shared schema of every fst-train config: all keys, documented, with the paper's defaults.

Config files in this folder call :func:`base_config` and override what differs. Every key is
overridable from the command line (``--config.rl.lr=3e-6``); unknown keys are an error that
suggests the nearest existing one (the config is locked).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "fst"  # rl (slow only) | gepa (fast only) | fst | fst_distill | sft (warm start)
    c.seed = 0
    c.num_cycles = 100  # one cycle = one GEPA round + rl.steps_per_cycle RL steps
    # (a task stream takes exactly len(stream) × ceil(task.switch_every / T) cycles)
    c.resume = "auto"  # auto: continue this run's checkpoints | force: accept another run's | never
    c.init_from = ""  # plasticity probe: a workdir whose latest params start this (fresh) run
    c.init_from_step = -1  # -1 = latest step of init_from
    c.progress = True  # tqdm bars for sampling, GEPA rounds and the run
    c.summary = True  # one-screen summary + KL-vs-reward PNG at the end
    # Persistent XLA compile cache (fst_jax/compile_cache.py): a re-run skips compiling the same
    # programs. auto = $JAX_COMPILATION_CACHE_DIR, else $FST_JAX_CACHE/xla_compile_cache, else
    # $XDG_CACHE_HOME (default ~/.cache)/fst_jax/xla_compile_cache; a path; "" = off.
    c.compile_cache_dir = "auto"

    c.model = ml_collections.ConfigDict()
    c.model.spec = (
        "qwen3-8b"  # HF dir, .gguf path, 'smollm2-135m-instruct', or 'random:<named config>'
    )
    c.model.dtype = "bfloat16"  # activation/matmul dtype for training (accumulation is f32)
    c.model.param_dtype = "float32"
    c.model.remat = "layer"  # none | layer | dots
    c.model.scan_layers = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 fills the remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.devices = -1  # use the first N devices only (-1 = all); handy for CPU tests

    c.task = ml_collections.ConfigDict()
    c.task.name = "codeio"
    c.task.kwargs = ml_collections.ConfigDict()  # forwarded to fst_jax.tasks.get_task
    # Continual run: comma-separated task names, switching every `switch_every` RL steps.
    c.task.stream = ""
    c.task.switch_every = 0  # exact RL steps per task; every task is evaluated at every eval
    c.task.seed_prompt = ""  # '' = the task's own seed prompt
    c.task.agnostic_seed_prompt = (
        "Solve the problem. Think step by step, check your work, and give the final answer in "
        "exactly the format the question asks for."
    )  # used for every task of a stream (paper: 100% task-agnostic seeds in the continual run)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 2048
    c.sampling.max_context_len = 1024  # one context text, tokens (prompt bank row length)
    c.sampling.context_in = "system"  # system | user
    # Contexts' keys/values kept across sampler calls under the current weights (slots; 0 =
    # off). Each slot holds max_context_len tokens of KV cache (SmolLM2-135M fp32: 46 KB/token).
    c.sampling.context_cache_slots = 16

    c.rl = ml_collections.ConfigDict()
    c.rl.steps_per_cycle = 6  # T
    c.rl.batch_size = 32  # problems per RL step
    c.rl.group_size = 8  # G rollouts per problem
    c.rl.loss = "cispo"  # registry: cispo | grpo | dr_grpo | gspo
    c.rl.advantage = "grpo"  # registry: grpo | rloo | dr_grpo
    c.rl.advantage_std = "sample"  # grpo: sample (ddof 1, verl) | population (ddof 0)
    c.rl.advantage_eps = 1e-6  # grpo: (r - mean) / (std + eps)
    c.rl.advantage_scale = True  # grpo: False = centre only (Dr. GRPO)
    c.rl.aggregation = "prompt_token_mean"  # | token_mean | sequence_mean | token_sum_norm
    c.rl.tau = 4.0  # CISPO IS-weight upper truncation (eps_high = 3)
    c.rl.clip_low = 0.0  # CISPO lower clip of the IS weight (0 = none, the paper's)
    c.rl.eps_low = 0.2  # PPO / GSPO clip range (grpo, dr_grpo, gspo losses)
    c.rl.eps_high = 0.2
    c.rl.kl_estimator = "k3"  # in-loss KL penalty estimator: k1 | k2 | k3
    # Optimizer updates per rollout batch, each on 1/U of the problems (verl ppo_mini_batch,
    # TRL num_iterations); 1 = the paper's (π_old = π_θ, so CISPO's ρ = 1).
    c.rl.updates_per_batch = 1
    c.rl.lr = 1e-6
    c.rl.warmup_steps = 10
    c.rl.b1 = 0.9
    c.rl.b2 = 0.999
    c.rl.weight_decay = 0.0
    c.rl.grad_clip = 0.0  # 0 = off (paper states none)
    c.rl.kl_coef = 0.0  # paper lists 0.001; off by default
    c.rl.micro_batches = 1
    c.rl.adam_eps = 1e-8
    c.rl.logit_chunk = 128  # sequence positions per chunk of the trainer's vocab projection
    # > 0: more micro-batches when a step's rows × columns exceed this many tokens per micro-batch
    # (bounds the train step's activation memory whatever batch size a run picks); 0 = off.
    c.rl.microbatch_tokens = 0
    # Train on GEPA's evaluation rollouts (mode fst): off | first_step (the cycle's first RL step,
    # exactly on-policy) | cycle (every step of the cycle; CISPO's weight corrects the lag). Only
    # rollouts of exported contexts from whole-anchor-set evaluations are reused; the rest of
    # each problem's G rollouts are sampled (README "Rollout reuse").
    c.rl.reuse_gepa_rollouts = "off"

    c.gepa = ml_collections.ConfigDict()
    c.gepa.k = 4  # contexts exported to the bank per cycle (K); G/K rollouts each
    c.gepa.budget = 960  # metric calls per cycle (paper: 960 over 192 anchors)
    c.gepa.anchor_size = 192  # anchor set = the next anchor_size training problems (lookahead)
    # lookahead: the next anchor_size RL problems (paper) | disjoint: a held-out slice of train
    # (disjoint_size problems, 0 = anchor_size) the RL stream never sees; gepa/answer_leak
    # measures how often exported contexts carry the next RL problems' gold answers.
    c.gepa.anchors = "lookahead"
    c.gepa.disjoint_size = 0
    c.gepa.leak_min_chars = 3  # golds shorter than this are too generic to count as leaked
    c.gepa.minibatch = 3
    c.gepa.rescore = "separate"  # separate: re-scoring carried prompts is outside the budget
    c.gepa.carry = "exported"  # re-scored + evolved each round: exported | all | <n exported>
    c.gepa.acceptance = "strict_improvement"  # | improvement_or_equal
    c.gepa.candidate_selection = "pareto"  # | current_best
    c.gepa.perfect_score = 1.0
    c.gepa.skip_perfect_score = True  # skip reflection when the parent aces its minibatch
    c.gepa.max_rollout_chars = 4000  # per example in the reflective dataset
    c.gepa.max_consecutive_skips = 8  # end a round after this many unusable reflections (0 = off)
    c.gepa.edit = "incremental"  # incremental | rewrite
    # local | openai | rule (a deterministic stand-in for a strong reflector: gepa/rule_lm.py)
    c.gepa.reflection_lm = "openai"
    c.gepa.reflection_model = "gpt-5.2"
    c.gepa.reflection_base_url = ""
    c.gepa.reflection_api_key_env = "OPENAI_API_KEY"
    c.gepa.reflection_max_tokens = 4096
    c.gepa.reflection_temperature = 0.7
    # Remote (openai) reflection LM: every failed call is retried or skipped and counted
    # (metrics gepa/skip/lm_<reason>), never fatal.
    c.gepa.reflection_timeout_s = 120.0  # per request
    c.gepa.reflection_max_retries = 5  # transient faults (timeouts, 429, 5xx, bad 200 bodies)
    c.gepa.reflection_backoff_s = 1.0  # retry i waits backoff_s · 2^i (or the Retry-After) ...
    c.gepa.reflection_backoff_max_s = 60.0  # ... at most this long
    c.gepa.reflection_max_reply_chars = 100_000  # a longer reply is a skip, its text not kept
    c.gepa.reflection_content_retries = 1  # corrective follow-ups for empty/unfenced/... replies
    c.gepa.max_context_chars = 8000  # a proposed context longer than this is rejected
    c.gepa.reply_cache_entries = 1024  # reply cache kept in the population state (checkpoints)
    c.gepa.max_pool = 32  # prompt-bank rows for GEPA evaluation calls

    c.eval = ml_collections.ConfigDict()
    c.eval.every_cycles = 5
    c.eval.num_examples = 256
    c.eval.k = 4  # mean@k
    c.eval.kl_examples = 64  # held-out prompts for KL(pi_theta || pi_base)
    c.eval.quadrants = True  # 2x2 weights x prompt at the final evaluation
    c.eval.at_start = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_cycles = 1
    c.checkpoint.keep = 3

    # mode=sft: supervised warm start (fst_jax.sft), cross-entropy on assistant turns.
    c.sft = ml_collections.ConfigDict()
    c.sft.data = "context_following"  # generator | .jsonl/.json/.parquet | hf:<id or saved dir>
    c.sft.data_kwargs = ml_collections.ConfigDict()  # generator kwargs (n, seed) or HF kwargs
    c.sft.messages_field = "messages"  # column holding [{role, content}, ...]
    c.sft.hf_split = "train"
    c.sft.val_data = ""  # '' = the data's held-out split (files: val_fraction by prompt hash)
    c.sft.val_fraction = 0.05
    c.sft.val_rows = 128
    c.sft.steps = 200
    c.sft.batch_size = 16  # conversations per step
    c.sft.micro_batches = 1
    c.sft.max_len = 512  # longer conversations are skipped and counted, never truncated
    c.sft.length_buckets = "64,128,192,256,384,512"  # padded lengths (one compile each)
    c.sft.window = 8  # batches per length-sorting window (bucketing by real length)
    c.sft.lr = 5e-5
    c.sft.warmup_steps = 10
    c.sft.b1 = 0.9
    c.sft.b2 = 0.999
    c.sft.weight_decay = 0.0
    c.sft.grad_clip = 1.0  # 0 = off
    c.sft.eval_every = 50  # validation loss every N steps (and at start and end)
    c.sft.checkpoint_every = 50
    c.sft.export = True  # HF checkpoint dir <workdir>/export at the end
    c.metrics = ml_collections.ConfigDict()  # metrics.jsonl + TensorBoard always
    c.metrics.wandb = ""  # a W&B project name mirrors the scalars there ('' = off; pip extra)
    return c
