#!/usr/bin/python3
"""The product guide's way of streaming (requests + iter_lines + json.loads),
timed on one long stream from maas-emulator, as the baseline of bench 2.

    guide_stream.py N      prints: python tokens=... wall=... cpu=... peak_rss_kib=...
"""
import json
import os
import resource
import sys
import time

import requests

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
API = os.environ["MAAS_API_BASE_URL"]
AUTH = os.environ["MAAS_AUTH_URL"]
ID, SECRET = os.environ["MAAS_CLIENT_ID"], os.environ["MAAS_CLIENT_SECRET"]
ACCOUNT = os.environ["MAAS_CLOUD_ACCOUNT"]

session = requests.Session()
session.trust_env = False  # loopback only
tok = session.post(AUTH, data="grant_type=client_credentials",
                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                   auth=(ID, SECRET)).json()
headers = {"Authorization": f"{tok['token_type']} {tok['access_token']}",
           "Content-Type": "application/json"}
payload = {"model": "mistralai/Mistral-7B-Instruct-v0.1",
           "request": {"prompt": f"bench [[fault:tokens={N}]] [[fault:coalesce]]",
                       "params": {"max_new_tokens": 100, "temperature": 0.7}},
           "cloudAccountId": ACCOUNT, "productName": "maas-model-mistral-7b-v0.1",
           "productId": "269c3034-e6c7-4359-9e77-c3efedfaa778"}


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


w0, c0 = time.monotonic(), cpu()
response = session.post(f"{API}/generatestream", headers=headers, data=json.dumps(payload),
                        stream=True)
tokens = nbytes = 0
for chunk in (json.loads(line.decode("utf-8")) for line in response.iter_lines() if line):
    if "result" in chunk:
        text = chunk["result"]["response"]["token"]["text"]
        tokens += 1
        nbytes += len(text.encode())
wall, cpu_s = time.monotonic() - w0, cpu() - c0
print(f"python tokens={tokens} bytes={nbytes} wall={wall:.3f} cpu={cpu_s:.3f} "
      f"ns_per_token={cpu_s * 1e9 / max(tokens, 1):.0f} "
      f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
sys.exit(0 if tokens == N else 1)
