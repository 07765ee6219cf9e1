"""Print the expected outputs in tests/test_beam_search.py, computed by Hugging Face's
generate (transformers 5.25.0, CPU) on Markov LMs: logits = table[last token].

CI has no transformers; the test file holds this script's output as literals. Rerun it
(pip install transformers==5.25.0, no CUDA torch needed) after changing the cases.

    python scripts/hf_beam_search_cases.py > /tmp/cases.txt
"""
import math
import os
import sys

import torch
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.test_beam_search import ISSUE_CASES, random_case_arguments, random_table  # noqa: E402


class MarkovConfig(PretrainedConfig):
    model_type = "markov"


class MarkovLM(PreTrainedModel, GenerationMixin):
    config_class = MarkovConfig

    def __init__(self, table):
        super().__init__(MarkovConfig(vocab_size=table.shape[0]))
        self.register_buffer("table", table.float())
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=self.table[input_ids])

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}


def hf_generate(table, prompts, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id, use_cache=False, do_sample=False, **kwargs)
    model = MarkovLM(torch.as_tensor(table, dtype=torch.float32))
    return model.generate(torch.tensor(prompts), generation_config=config).tolist()


def main():
    import transformers
    print(f"# transformers {transformers.__version__}")
    print("ISSUE_EXPECTED = [")
    for table, prompts, max_new, kwargs in ISSUE_CASES:
        print(f"    {hf_generate(table, prompts, max_new, **kwargs)},")
    print("]")
    print("RANDOM_EXPECTED = [")
    for index in range(len(random_case_arguments())):
        args = random_case_arguments()[index]
        table = random_table(args["V"], args["seed"])
        kwargs = {k: v for k, v in args.items() if k not in ("V", "seed", "prompts", "max_new_tokens")}
        print(f"    {hf_generate(table, args['prompts'], args['max_new_tokens'], **kwargs)},")
    print("]")


if __name__ == "__main__":
    main()
