#!/usr/bin/python3
# The product guide's "Complete Python Workflow Script" (Intel Tiber AI Cloud,
# "Model as a Service API"), made runnable against maas-emulator:
#  - CLIENT_ID, CLIENT_SECRET, CLOUD_ACCOUNT, API_BASE_URL and AUTH_URL come
#    from MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, MAAS_CLOUD_ACCOUNT,
#    MAAS_API_BASE_URL and MAAS_AUTH_URL (the guide's values are the defaults);
#  - time.sleep(2) became a pause of MAAS_DEMO_PAUSE_MS milliseconds (default 0);
#  - with --check it also asserts what it prints: 5 models, and for every
#    generation that the streamed non-special token texts concatenate to the
#    final generated_text; any failure makes it exit non-zero.
# Otherwise it is the guide's code and prints what the guide's script prints.
# It proves the emulator speaks the API the product's own client expects.
# Run it with Debian's interpreter (python3-requests): /usr/bin/python3.

import json
import os
import sys
import time
import requests
from typing import Dict, List, Iterator

# 1. Define global variables
CLIENT_ID = os.environ.get("MAAS_CLIENT_ID", "my_client_id")
CLIENT_SECRET = os.environ.get("MAAS_CLIENT_SECRET", "my_client_secret")
CLOUD_ACCOUNT = os.environ.get("MAAS_CLOUD_ACCOUNT", "my_cloud_account")
API_BASE_URL = os.environ.get("MAAS_API_BASE_URL", "https://us-region-2-sdk-api.cloud.intel.com/v1/maas")
AUTH_URL = os.environ.get("MAAS_AUTH_URL", "https://client-token.api.idcservice.net/oauth2/token")
DEMO_PAUSE_SECONDS = int(os.environ.get("MAAS_DEMO_PAUSE_MS", "0")) / 1000.0

CHECK = "--check" in sys.argv[1:]
_failures: List[str] = []
_streams_checked = 0


def _fail(what: str) -> None:
    _failures.append(what)
    print(f"\nCHECK FAILED: {what}", file=sys.stderr, flush=True)


def _checked(stream: Iterator[Dict], label: str) -> Iterator[Dict]:
    '''Pass a stream through unchanged; with --check, verify it on the way.'''
    global _streams_checked
    texts = []
    final = None
    for chunk in stream:
        if 'result' in chunk:
            response = chunk['result']['response']
            if not response['token'].get('special', False):
                texts.append(response['token']['text'])
            if 'generated_text' in response:
                final = response
        elif CHECK:
            _fail(f"{label}: unexpected message {chunk!r}")
        yield chunk
    if CHECK:
        _streams_checked += 1
        if final is None:
            _fail(f"{label}: the stream ended without its final message")
        elif final['generated_text'] != ''.join(texts):
            _fail(f"{label}: generated_text differs from the streamed tokens")
        elif 'details' not in final or final['details'].get('generated_tokens', -1) < len(texts):
            _fail(f"{label}: details missing or generated_tokens too small")


# 2. Authentication
def get_auth_token(client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> str:
    '''Get authentication token for API access.'''
    response = requests.post(
        url=AUTH_URL,
        data='grant_type=client_credentials',
        headers={'Content-Type': 'application/x-www-form-urlencoded'},
        auth=(client_id, client_secret)
    )
    token_data = response.json()
    return f"{token_data['token_type']} {token_data['access_token']}"


# 3. Model Listing
def get_models(client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> List[Dict]:
    '''Get list of all available models.'''
    headers = {'Authorization': get_auth_token(client_id, client_secret)}
    url = f'{API_BASE_URL}/models'
    response = requests.get(url, headers=headers)
    return response.json()['models']


# 4. Text Generation
def generate_text_stream(
    prompt: str,
    model_info: Dict,
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
    cloud_account_id: str = CLOUD_ACCOUNT,
    max_tokens: int = 250,
    temperature: float = 0.7
) -> Iterator[Dict]:
    '''Generate text with streaming response.'''
    payload = {
        "model": model_info['model_name'],
        "request": {
            "prompt": prompt,
            "params": {
                "max_new_tokens": max_tokens,
                "temperature": temperature
            }
        },
        "cloudAccountId": cloud_account_id,
        "productName": model_info['product_name'],
        "productId": model_info['product_id']
    }

    headers = {
        'Authorization': get_auth_token(client_id, client_secret),
        'Content-Type': 'application/json'
    }

    response = requests.post(
        f'{API_BASE_URL}/generatestream',
        headers=headers,
        data=json.dumps(payload),
        stream=True
    )

    return (json.loads(line.decode('utf-8'))
            for line in response.iter_lines() if line)


def demonstrate_all_apis():
    '''Run comprehensive demonstration of all API capabilities.'''
    print("=== Intel MaaS API Complete Demo ===\n")

    # Section 1: Authentication Demo
    print("1. Authentication Test")
    print("-" * 50)
    try:
        token = get_auth_token()
        print("Authentication successful")
        print(f"Token: {token[:50]}...")
    except Exception as e:
        print(f"Authentication failed: {str(e)}")
        if CHECK:
            _fail(f"authentication: {e}")
    print("\n")

    # Section 2: Model Listing Demo
    print("2. Available Models")
    print("-" * 50)
    try:
        models = get_models(CLIENT_ID, CLIENT_SECRET)
        print(f"Found {len(models)} available models:")
        for model in models:
            print(f"\nModel: {model['model_name']}")
            print(f"Product ID: {model['product_id']}")
            print(f"Product Name: {model['product_name']}")
        if CHECK and len(models) != 5:
            _fail(f"expected 5 models, got {len(models)}")
    except Exception as e:
        print(f"Failed to list models: {str(e)}")
        if CHECK:
            _fail(f"model listing: {e}")
    print("\n")

    # Section 3: Text Generation Demo
    print("3. Text Generation Tests")
    print("-" * 50)

    test_prompts = [
        "Write a poem about programming, in four lines and two stanzas, which uses iambic pentameter in rhyming couplets."
        # "What are the key principles of a good AI application?"
    ]

    for model in models:
        print(f"\nTesting {model['model_name']}")
        print("-" * 30)
        prompt = test_prompts[0]
        print(f"Prompt: {prompt}\n")

        try:
            response = _checked(generate_text_stream(
                prompt=prompt,
                model_info=model,
                max_tokens=100,
                temperature=0.9
            ), model['model_name'])

            print("Response:")
            for chunk in response:
                if 'result' in chunk:
                    token = chunk['result']['response']['token']['text']
                    print(token, end='', flush=True)
                    if 'details' in chunk['result']['response']:
                        details = chunk['result']['response']['details']
                        print(f"\n\nCompletion Details:")
                        print(f"- Tokens generated: {details['generated_tokens']}")
                        print(f"- Finish reason: {details['finish_reason']}")
                        if 'seed' in details:
                            print(f"- Seed: {details['seed']}")
            print("\n")
            time.sleep(DEMO_PAUSE_SECONDS)
        except Exception as e:
            print(f"✗ Generation failed: {str(e)}")
            if CHECK:
                _fail(f"generation with {model['model_name']}: {e}")

    # Section 4: Parameter variation Demo
    print("\n4. Parameter Variation Test")
    print("-" * 50)
    model = models[0]
    prompt = "Write a short story about a robot."
    parameter_sets = [
        {"max_tokens": 50, "temperature": 0.2},
        {"max_tokens": 50, "temperature": 0.8},
        {"max_tokens": 200, "temperature": 0.5}
    ]

    for params in parameter_sets:
        print(f"\nTesting with parameters:")
        print(f"- Max tokens: {params['max_tokens']}")
        print(f"- Temperature: {params['temperature']}")

        try:
            response = _checked(generate_text_stream(
                prompt=prompt,
                model_info=model,
                max_tokens=params['max_tokens'],
                temperature=params['temperature']
            ), f"{model['model_name']} {params}")

            print("\nResponse:")
            for chunk in response:
                if 'result' in chunk:
                    token = chunk['result']['response']['token']['text']
                    print(token, end='', flush=True)
            print("\n")
            time.sleep(DEMO_PAUSE_SECONDS)
        except Exception as e:
            print(f"✗ Generation failed: {str(e)}")
            if CHECK:
                _fail(f"generation with {params}: {e}")


if __name__ == "__main__":
    demonstrate_all_apis()
    if CHECK:
        if _streams_checked != 8:
            _fail(f"expected 8 generations, checked {_streams_checked}")
        if _failures:
            print(f"guide_client: {len(_failures)} check(s) failed", file=sys.stderr)
            sys.exit(1)
        print("guide_client: all checks passed", file=sys.stderr)
