#!/usr/bin/env python3
"""Regenerate the recorded-stream fixtures of test_ndjson.c.

Writes, next to this script:
  stream-basic.ndjson    50 token lines and a final line in the shape of the
                         product guide's curl example (compact, as the gateway
                         writes it, with protojson's occasional extra spaces)
  stream-basic.expected  the messages the decoder must produce, one per line
  stream-error.ndjson    three tokens, then a mid-stream {"error": ...} line
  stream-error.expected

The .expected files come from Python's json module, an implementation
independent of the C decoder under test. Their format (dump_msg() in
test_ndjson.c prints the same):
  TOKEN id=<u32> special=<0|1> logprob=<none|%.17g> text[<len>]="<bytes>" rid="<bytes>"
  FINAL has_token=<0|1> [token fields as above] reason=<enum> name="<bytes>"
        gen=<u32> seed=<none|u64> gt[<len>]="<bytes>" rid="<bytes>"     (one line)
  ERROR code=<int> msg="<bytes>" rid="<bytes>"
where <bytes> shows printable ASCII other than '"' and '\\' as is and every
other byte as \\xHH.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
RID = "8764a8c3-5f0e-4c7a-9d1b-2e6f3a9b0c11"
FINISH = {"FINISH_REASON_LENGTH": 1, "FINISH_REASON_EOS_TOKEN": 2,
          "FINISH_REASON_STOP_SEQUENCE": 3}

# (text as it appears between the quotes on the wire, logprob literal or None)
TOKENS = [
    (" Why", "-0.11687851"),
    (" don", "-1.2207031"),
    ("'", "-0.0004181862"),
    ("t", "-1.1920929e-07"),
    (" scientists", "-0.3400879"),
    (" trust", "-0.00012445450"),
    (" atoms", "-0.0061950684"),
    ("?", "0"),                              # an integer logprob
    ("\\n", "-0.5683594"),                   # escaped newline
    ("\\n", "-0.0009994507"),
    ("Because", "-0.04727173"),
    (" they", None),                         # no logprob at all
    (" make", "-0.0000026226044"),
    (" up", "-1.5e-05"),
    (" everything", "-0.00078487396"),
    ("!", "-0.2758789"),
    (" \\\"", "-2.1445312"),                 # escaped quote
    ("Quote", "-3.0410156"),
    ("\\\"", "-0.19628906"),
    (" back", "-1.7636719"),
    ("slash", "-0.8925781"),
    (":", "-0.4189453"),
    (" \\\\", "-0.6142578"),                 # escaped backslash
    (" na", "-2.6054688"),
    ("\u00efve", "-0.011619568"),            # raw UTF-8: "ïve"
    (" caf", "-0.9584961"),
    ("\\u00e9", "-0.0017900467"),            # escaped U+00E9
    (" \U0001F642", "-1.3222656"),           # raw 4-byte emoji
    (" \\ud83d\\ude00", "-0.7373047"),       # escaped surrogate pair
    ("\\t", "-4.2734375"),                   # escaped tab
    ("tab", "-0.3803711"),
    (" and", "-0.105895996"),
    (" slash", "-0.0390625"),
    (" \\/", "-1.9443359"),                  # escaped solidus
    (" \u2013", "-0.6699219"),               # raw en dash (3 bytes)
    (" \u00dcn\u00efc\u00f6de", "-2.2402344"),
    (" \u65e5\u672c", "-1.0859375"),         # raw CJK
    (" \\u65e5", "-0.6435547"),              # escaped CJK
    (".", "-0.027740479"),
    (" I", "-0.5019531"),
    (" hope", "-0.12176514"),
    (" that", "-0.87402344"),
    (" made", "-0.0036411285"),
    (" you", "-0.000104427338"),
    (" smile", "-0.011489868"),
    ("!", "-0.09173584"),
    (" \\u00a9", "-5.4023438"),
    (" 2024", "-3.1015625"),
    (" \\u0041BC", "-0.75"),                 # escaped ASCII
    (".", "-0.0625"),
]
FINAL_TOKEN = ("</s>", "-0.0011997223")
SEED = "13414724236876468656"                 # above INT64_MAX


def token_obj(tid, text, logprob, special, sp):
    """One token object; sp picks protojson's spacing for this line."""
    colon, comma = (": ", ", ") if sp else (":", ",")
    parts = ['"id"%s%d' % (colon, tid), '"text"%s"%s"' % (colon, text)]
    if logprob is not None:
        parts.append('"logprob"%s%s' % (colon, logprob))
    parts.append('"special"%s%s' % (colon, "true" if special else "false"))
    return "{" + comma.join(parts) + "}"


def make_basic():
    rng = random.Random(20240611)
    lines = []
    texts = []
    for i, (text, lp) in enumerate(TOKENS):
        tid = rng.randrange(3, 32000)
        sp = i % 7 == 3
        colon, comma = (": ", ", ") if sp else (":", ",")
        tok = token_obj(tid, text, lp, False, sp)
        if i % 11 == 5:   # field order is not fixed
            body = '"requestID"%s"%s"%s"token"%s%s%s"top_tokens"%s[]' % (
                colon, RID, comma, colon, tok, comma, colon)
        else:
            body = '"token"%s%s%s"top_tokens"%s[]%s"requestID"%s"%s"' % (
                colon, tok, comma, colon, comma, colon, RID)
        lines.append('{"result"%s{"response"%s{%s}}}' % (colon, colon, body))
        texts.append(json.loads('"%s"' % text))
    generated = "".join(texts)
    gt_wire = json.dumps(generated, ensure_ascii=False)
    tok = token_obj(2, FINAL_TOKEN[0], FINAL_TOKEN[1], True, False)
    lines.append(
        '{"result":{"response":{"token":%s,"top_tokens":[],"requestID":"%s",'
        '"generated_text":%s,"details":{"finish_reason":"FINISH_REASON_EOS_TOKEN",'
        '"generated_tokens":%d,"seed":"%s"}}}}' % (tok, RID, gt_wire, len(TOKENS) + 1, SEED))
    return "".join(l + "\n" for l in lines)


def make_error():
    lines = []
    for i, (text, lp) in enumerate(TOKENS[:3]):
        tok = token_obj(100 + i, text, lp, False, False)
        lines.append('{"result":{"response":{"token":%s,"top_tokens":[],"requestID":"%s"}}}'
                     % (tok, RID))
    lines.append(
        '{"error":{"code":14,"message":"sorry, we are at maximum capacity. Please come back '
        'later","details":[{"@type":"type.googleapis.com/google.rpc.DebugInfo","detail":"x"},'
        '{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"%s"}]}}' % RID)
    return "".join(l + "\n" for l in lines)


def esc(b):
    out = []
    for c in b:
        if 0x20 <= c < 0x7F and c not in (0x22, 0x5C):
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return '"' + "".join(out) + '"'


def u8(s):
    return s.encode("utf-8")


def token_fields(t):
    lp = t.get("logprob")
    return "id=%d special=%d logprob=%s text[%d]=%s" % (
        t.get("id", 0), 1 if t.get("special") else 0,
        "none" if lp is None else "%.17g" % float(lp),
        len(u8(t["text"])), esc(u8(t["text"])))


def expected(stream):
    out = []
    for line in stream.split("\n"):
        if not line.strip():
            continue
        root = json.loads(line)
        if "error" in root:
            e = root["error"]
            rid = ""
            for d in e.get("details", []):
                if d.get("@type", "").endswith("google.protobuf.StringValue"):
                    rid = d["value"]
                    break
            out.append("ERROR code=%d msg=%s rid=%s" % (
                e.get("code", -1), esc(u8(e.get("message", ""))), esc(u8(rid))))
            continue
        r = root["result"]
        r = r.get("response", r)
        rid = r.get("requestID", "")
        if "details" in r or "generated_text" in r:
            d = r.get("details", {})
            name = d.get("finish_reason", "")
            gt = r.get("generated_text", "")
            seed = d.get("seed")
            tok = ("has_token=1 " + token_fields(r["token"])) if "token" in r else \
                "has_token=0"
            out.append("FINAL %s reason=%d name=%s gen=%d seed=%s gt[%d]=%s rid=%s" % (
                tok, FINISH.get(name, 0), esc(u8(name)), int(d.get("generated_tokens", 0)),
                "none" if seed is None else str(int(seed)), len(u8(gt)), esc(u8(gt)),
                esc(u8(rid))))
        else:
            out.append("TOKEN %s rid=%s" % (token_fields(r["token"]), esc(u8(rid))))
    return "".join(l + "\n" for l in out)


def write(name, text):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(text.encode("utf-8"))


if __name__ == "__main__":
    for base, make in (("stream-basic", make_basic), ("stream-error", make_error)):
        stream = make()
        write(base + ".ndjson", stream)
        write(base + ".expected", expected(stream))
