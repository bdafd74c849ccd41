/*
 * maas-emulator: the model catalogue and the deterministic generator.
 *
 * A stream is a pure function of (model, prompt, temperature,
 * max_new_tokens): their FNV-1a 64 hash picks a natural length and every
 * token, so any token can be recomputed from its index.  The final message
 * therefore streams generated_text by recomputing the tokens instead of
 * keeping them: memory per stream is constant, even for tokens=10000000.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <stdlib.h>
#include <string.h>

/* The guide's sample /models response, in its order. */
const struct model_entry g_models[] = {
    {"Qwen/Qwen2.5-Coder-32B-Instruct", "97a75a6d-7eb4-40c9-894b-8e9f5924b555",
     "maas-model-qwen-2.5-coder-32b"},
    {"Qwen/Qwen2.5-32B-Instruct", "0a0bffe9-2f62-4ebb-8aee-118ede22b816",
     "maas-model-qwen-2.5-32b"},
    {"mistralai/Mistral-7B-Instruct-v0.1", "269c3034-e6c7-4359-9e77-c3efedfaa778",
     "maas-model-mistral-7b-v0.1"},
    {"meta-llama/Meta-Llama-3.1-8B-Instruct", "ba5d2874-dc83-425e-af98-c810f11dad79",
     "maas-model-llama-3.1-8b"},
    {"meta-llama/Meta-Llama-3.1-70B-Instruct", "8d728109-0fb2-46c7-a406-1113634d72ab",
     "maas-model-llama-3.1-70b"},
};
const size_t g_nmodels = sizeof g_models / sizeof g_models[0];

/* Token texts.  Mostly ordinary sub-words, plus the awkward ones a client
 * must survive: quotes, backslashes, newlines, a tab, a control character,
 * multi-byte UTF-8 (2, 3 and 4 bytes), JSON-looking text. */
static const char *const words[] = {
    "Data", " data", " and", " information", " are", " often", " used",
    " interchangeably", ",", " but", " they", " have", " distinct", " meanings",
    ".", "\n", "\n\n", "**", " The", " the", " a", " of", " to", " in", " is",
    " that", " it", " for", " with", " as", " on", " can", " be", " model",
    " token", " stream", " server", " client", " answer", " question", " time",
    " quick", " brown", " fox", " jumps", " over", " lazy", " dog", "!", "?",
    ":", ";", " (", ")", " -", "\u2014", " \"", "\"", " 'quoted'", " it's",
    " back\\slash", " C:\\path\\file", " \\n", " tab\there", " unit\037sep",
    " {\"json\": [1, 2]}", " <s>", " 100%", " <b>", " &amp;",
    " na\u00efve", " caf\u00e9", " r\u00e9sum\u00e9", " \u00dcber", " \u03a9mega",
    " \u65e5\u672c", "\u8a9e", " \u4e2d\u6587", " \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    " \U0001F642", " \U0001F680", "\U0001F44D\U0001F3FD", " \u2028sep",
    " 42", " 3.14", " 1e10", " -7", " null", " true", " [x]",
};
#define NWORDS (sizeof words / sizeof words[0])

static char *escaped[NWORDS];
static size_t escaped_len[NWORDS];
static uint32_t word_id[NWORDS];

bool gen_init(void)
{
    for (size_t i = 0; i < NWORDS; i++) {
        struct sbuf b = {0};
        sbuf_add_json(&b, words[i], strlen(words[i]));
        escaped_len[i] = b.len;
        escaped[i] = sbuf_take(&b);
        if (!escaped[i])
            return false;
        /* uint32 ids spread over the whole range; 2 is reserved for </s>. */
        word_id[i] = fnv1a32(words[i]);
        if (word_id[i] == 2)
            word_id[i] = 3;
    }
    return true;
}

void gen_free(void)
{
    for (size_t i = 0; i < NWORDS; i++) {
        free(escaped[i]);
        escaped[i] = NULL;
    }
}

void gen_plan_make(struct gen_plan *p, const char *model, size_t model_len, const char *prompt,
                   size_t prompt_len, bool has_temperature, float temperature, bool has_max,
                   uint32_t max_new_tokens, long tokens_fault)
{
    uint64_t h = FNV64_OFFSET;
    h = fnv1a64(h, model, model_len);
    h = fnv1a64(h, "", 1);
    h = fnv1a64(h, prompt, prompt_len);
    h = fnv1a64(h, "", 1);
    uint32_t tbits = 0xffffffffu; /* "no temperature" */
    if (has_temperature)
        memcpy(&tbits, &temperature, sizeof tbits);
    unsigned char tb[4] = {(unsigned char)tbits, (unsigned char)(tbits >> 8),
                           (unsigned char)(tbits >> 16), (unsigned char)(tbits >> 24)};
    h = fnv1a64(h, tb, sizeof tb);
    uint32_t m = has_max ? max_new_tokens : 0;
    unsigned char mb[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                           (unsigned char)(m >> 24)};
    h = fnv1a64(h, mb, sizeof mb);

    p->hash = h;
    uint64_t natural = 20 + h % 80;
    if (tokens_fault >= 0) {
        p->n_text = (uint64_t)tokens_fault;
        p->eos = false;
    } else if (has_max && max_new_tokens <= natural) {
        p->n_text = max_new_tokens;
        p->eos = false;
    } else {
        p->n_text = natural;
        p->eos = true;
    }
    /* Sampling reports a seed; greedy decoding (temperature 0 or unset)
     * does not.  Most seeds are above INT64_MAX. */
    p->has_seed = has_temperature && temperature != 0.0f;
    p->seed = mix64(h ^ 0x5eed5eed5eed5eedULL);
    if ((p->seed & 3) != 0)
        p->seed |= 1ULL << 63;
}

const char *gen_token(const struct gen_plan *p, uint64_t i, size_t *len, uint32_t *id,
                      bool *special)
{
    if (p->eos && i == p->n_text) {
        *len = 4;
        *id = 2;
        *special = true;
        return "</s>";
    }
    size_t w = (size_t)(mix64(p->hash + i * 0x9e3779b97f4a7c15ULL) % NWORDS);
    *len = escaped_len[w];
    *id = word_id[w];
    *special = false;
    return escaped[w];
}

bool gen_logprob(const struct gen_plan *p, uint64_t i, double *out)
{
    if (i % 7 == 6)
        return false;
    uint64_t r = mix64(p->hash ^ (i * 0xd1b54a32d192ed03ULL));
    *out = -(double)(1 + r % 499999999) / 1e8;
    return true;
}
