/*
 * maas-emulator: libmicrohttpd callbacks, routing and the service's three
 * endpoints (POST /oauth2/token, GET /v1/maas/models, POST
 * /v1/maas/generatestream), plus the /emulator/ control endpoints.
 *
 * Every request gets a `struct request` (con_cls).  The body is read in
 * full before any answer so that keep-alive survives every error path,
 * except a Content-Length above the limit, refused at once.  Faults are
 * gathered once (--fault, the queue, the prompt's directives), a first-byte
 * delay parks the connection, then the endpoint answers.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <inttypes.h>
#include <pthread.h>
#include <math.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

/* ------------------------------------------------------------------ */
/* request lifetime                                                    */
/* ------------------------------------------------------------------ */

static void str_free(struct str *s)
{
    free(s->p);
    s->p = NULL;
    s->n = 0;
}

static const char *toe_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK:
        return "ok";
    case MHD_REQUEST_TERMINATED_WITH_ERROR:
        return "closed-with-error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED:
        return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN:
        return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR:
        return "read-error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
        return "client-abort";
    }
    return "?";
}

void request_unref(struct request *rq)
{
    if (--rq->refs > 0)
        return;
    if (!g_quiet) {
        char extra[160] = "";
        if (rq->kind == BODY_STREAM)
            snprintf(extra, sizeof extra, " tokens=%" PRIu64 " end=%s", rq->msg_i,
                     rq->end ? rq->end : "cut");
        else if (rq->end)
            snprintf(extra, sizeof extra, " end=%s", rq->end);
        char status[12] = "-";
        if (rq->status)
            snprintf(status, sizeof status, "%u", rq->status);
        emu_log("%s %s %s rid=%s%s conn=%s %" PRIu64 "ms", rq->method, rq->path, status, rq->rid,
                extra, toe_name(rq->toe), now_ms() - rq->t0);
    }
    sbuf_free(&rq->in);
    sbuf_free(&rq->out);
    str_free(&rq->g.model);
    str_free(&rq->g.prompt);
    str_free(&rq->g.account);
    str_free(&rq->g.product_name);
    str_free(&rq->g.product_id);
    free(rq);
}

static enum route route_of(const char *url)
{
    static const struct {
        const char *path;
        enum route route;
    } routes[] = {
        {"/oauth2/token", ROUTE_TOKEN},
        {"/v1/maas/models", ROUTE_MODELS},
        {"/v1/maas/generatestream", ROUTE_GENERATE},
        {"/emulator/stats", ROUTE_EMU_STATS},
        {"/emulator/reset", ROUTE_EMU_RESET},
        {"/emulator/expire-tokens", ROUTE_EMU_EXPIRE},
        {"/emulator/faults", ROUTE_EMU_FAULTS},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].path) == 0)
            return routes[i].route;
    return ROUTE_UNKNOWN;
}

static struct request *request_new(struct MHD_Connection *conn, const char *url, const char *method)
{
    struct request *rq = calloc(1, sizeof *rq);
    if (!rq)
        return NULL;
    rq->refs = 1;
    rq->conn = conn;
    rq->w.conn = conn;
    rq->w.heap_idx = SIZE_MAX;
    rq->w.fd = -1;
    rq->route = route_of(url);
    rq->t0 = now_ms();
    rq->toe = MHD_REQUEST_TERMINATED_COMPLETED_OK;
    snprintf(rq->method, sizeof rq->method, "%s", method);
    snprintf(rq->path, sizeof rq->path, "%s", url);
    /* Keep the log line one line whatever the client sent. */
    for (char *p = rq->path; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    uuid4(rq->rid);
    faults_init(&rq->f);
    return rq;
}

/* ------------------------------------------------------------------ */
/* responses                                                           */
/* ------------------------------------------------------------------ */

static enum MHD_Result queue(struct request *rq, unsigned status, struct MHD_Response *r)
{
    rq->status = status;
    rq->answered = true;
    if (status == MHD_HTTP_UNAUTHORIZED &&
        (rq->route == ROUTE_MODELS || rq->route == ROUTE_GENERATE))
        atomic_fetch_add(&g_stats.unauthorized, 1);
    enum MHD_Result ret = MHD_queue_response(rq->conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Send a whole body (taking ownership of the malloc'd `body`).  headers:
 * NULL-terminated name/value pairs. */
static enum MHD_Result send_body(struct request *rq, unsigned status, const char *ctype,
                                 char *body, size_t len, const char *const *headers)
{
    struct MHD_Response *r;
    if (!body)
        return MHD_NO;
    if (faults_any_body(&rq->f)) {
        rq->kind = BODY_PLAIN;
        sbuf_free(&rq->out);
        rq->out.p = body;
        rq->out.len = rq->out.cap = len;
        r = MHD_create_response_from_callback(len, 4096, body_reader, rq, body_reader_free);
        if (!r)
            return MHD_NO;
        rq->refs++;
    } else {
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            free(body);
            return MHD_NO;
        }
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; headers && headers[i]; i += 2)
        if (headers[i + 1])
            MHD_add_response_header(r, headers[i], headers[i + 1]);
    return queue(rq, status, r);
}

static enum MHD_Result send_json(struct request *rq, unsigned status, json_t *doc,
                                 const char *const *headers)
{
    char *body = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    if (!body)
        return MHD_NO;
    return send_body(rq, status, "application/json", body, strlen(body), headers);
}

static int grpc_code_of(unsigned http)
{
    switch (http) {
    case 400: return 3;  /* INVALID_ARGUMENT */
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 5;  /* NOT_FOUND */
    case 405: return 12; /* UNIMPLEMENTED */
    case 413: return 3;
    case 429: return 8;  /* RESOURCE_EXHAUSTED */
    case 502: return 14; /* UNAVAILABLE */
    case 503: return 14;
    case 504: return 4;  /* DEADLINE_EXCEEDED */
    default: return 13;  /* INTERNAL */
    }
}

static const char *oauth_error_of(unsigned http)
{
    switch (http) {
    case 400: return "invalid_request";
    case 401: return "invalid_client";
    case 403: return "unauthorized_client";
    case 404: return "invalid_request";
    case 500: return "server_error";
    default: return "temporarily_unavailable";
    }
}

enum shape { SHAPE_AUTO, SHAPE_BARE };

/* An error in the shape the path uses: OAuth2 on the token endpoint, a bare
 * google.rpc.Status on /models (and routing errors), {"error": Status} on
 * generatestream and the control endpoints. */
/* The rate-limit fault's three values, verbatim, as X-RateLimit-* headers (parts may be empty). */
static size_t rate_headers(const struct faults *f, char vals[3][128], const char **headers)
{
    static const char *const names[3] = {"X-RateLimit-Limit", "X-RateLimit-Remaining",
                                         "X-RateLimit-Reset"};
    const char *p = f->rate_limit;
    size_t h = 0;
    if (!p[0])
        return 0;
    for (int i = 0; i < 3; i++) {
        size_t n = strcspn(p, ",");
        memcpy(vals[i], p, n);
        vals[i][n] = '\0';
        if (n) {
            headers[h++] = names[i];
            headers[h++] = vals[i];
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return h;
}

static enum MHD_Result send_error(struct request *rq, unsigned http, const char *msg,
                                  enum shape shape, bool rid_details, const char *retry_after)
{
    const char *headers[13] = {NULL};
    char rate[3][128];
    size_t h = 0;
    json_t *doc;
    /* Messages may quote client input, cut anywhere: keep them valid UTF-8. */
    char safe[2048];
    snprintf(safe, sizeof safe, "%s", msg);
    utf8_sanitize(safe);
    msg = safe;
    if (rq->route == ROUTE_TOKEN && shape == SHAPE_AUTO) {
        doc = json_pack("{s:s, s:s}", "error", oauth_error_of(http), "error_description", msg);
        if (http == 401) {
            headers[h++] = "WWW-Authenticate";
            headers[h++] = "Basic realm=\"maas-emulator\"";
        }
    } else {
        json_t *details = json_array();
        if (rid_details && details)
            json_array_append_new(details, json_pack("{s:s, s:s}", "@type", EMU_STRINGVALUE_TYPE,
                                                     "value", rq->rid));
        json_t *st = json_pack("{s:i, s:s, s:o}", "code", grpc_code_of(http), "message", msg,
                               "details", details);
        bool bare = shape == SHAPE_BARE || rq->route == ROUTE_MODELS ||
                    rq->route == ROUTE_UNKNOWN;
        doc = bare ? st : json_pack("{s:o}", "error", st);
        if (http == 401) {
            headers[h++] = "WWW-Authenticate";
            headers[h++] = "Bearer realm=\"maas-emulator\"";
        }
    }
    if (retry_after) {
        headers[h++] = "Retry-After";
        headers[h++] = retry_after;
    }
    h += rate_headers(&rq->f, rate, headers + h);
    headers[h] = NULL;
    return send_json(rq, http, doc, headers);
}

/* ------------------------------------------------------------------ */
/* decoding a generatestream body (protojson rules, DiscardUnknown)     */
/* ------------------------------------------------------------------ */

static bool decode_fail(struct gen_req *g, const char *type, const char *name)
{
    snprintf(g->decode_err, sizeof g->decode_err, "proto: invalid value for %s field %s", type,
             name);
    return false;
}

/* Field by JSON name or proto name; NULL and JSON null both mean unset. */
static json_t *field(json_t *obj, const char *json_name, const char *proto_name)
{
    json_t *v = json_object_get(obj, json_name);
    if (!v && proto_name)
        v = json_object_get(obj, proto_name);
    return json_is_null(v) ? NULL : v;
}

static bool take_string(struct gen_req *g, json_t *obj, const char *json_name,
                        const char *proto_name, struct str *out)
{
    json_t *v = field(obj, json_name, proto_name);
    if (!v)
        return true;
    if (!json_is_string(v))
        return decode_fail(g, "string", json_name);
    size_t n = json_string_length(v);
    out->p = malloc(n + 1);
    if (!out->p) {
        snprintf(g->decode_err, sizeof g->decode_err, "out of memory");
        return false;
    }
    memcpy(out->p, json_string_value(v), n);
    out->p[n] = '\0';
    out->n = n;
    return true;
}

static bool decode_body(struct gen_req *g, const char *body, size_t len)
{
    if (!utf8_valid((const unsigned char *)body, len)) {
        snprintf(g->decode_err, sizeof g->decode_err,
                 "proto: syntax error: invalid UTF-8 in request body");
        return false;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        snprintf(g->decode_err, sizeof g->decode_err, "proto: syntax error (line %d:%d): %s",
                 jerr.line, jerr.column, jerr.text);
        return false;
    }
    bool ok = false;
    if (!json_is_object(root)) {
        snprintf(g->decode_err, sizeof g->decode_err,
                 "proto: syntax error: unexpected token, want an object");
        goto out;
    }
    if (!take_string(g, root, "model", NULL, &g->model) ||
        !take_string(g, root, "cloudAccountId", "cloud_account_id", &g->account) ||
        !take_string(g, root, "productName", "product_name", &g->product_name) ||
        !take_string(g, root, "productId", "product_id", &g->product_id))
        goto out;
    json_t *req = field(root, "request", NULL);
    if (req) {
        if (!json_is_object(req)) {
            decode_fail(g, "message", "request");
            goto out;
        }
        g->has_request = true;
        if (!take_string(g, req, "prompt", NULL, &g->prompt))
            goto out;
        json_t *params = field(req, "params", NULL);
        if (params) {
            if (!json_is_object(params)) {
                decode_fail(g, "message", "params");
                goto out;
            }
            g->has_params = true;
            json_t *m = field(params, "maxNewTokens", "max_new_tokens");
            if (m) {
                double d = NAN;
                if (json_is_integer(m))
                    d = (double)json_integer_value(m);
                else if (json_is_real(m))
                    d = json_real_value(m);
                else if (json_is_string(m)) {
                    const char *s = json_string_value(m);
                    char *end;
                    d = strtod(s, &end);
                    if (*s == '\0' || *end != '\0')
                        d = NAN;
                }
                if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) {
                    decode_fail(g, "uint32", "maxNewTokens");
                    goto out;
                }
                g->has_max = true;
                g->max_new_tokens = (uint32_t)d;
            }
            json_t *t = field(params, "temperature", NULL);
            if (t) {
                double d = NAN;
                bool okv = true;
                if (json_is_number(t))
                    d = json_number_value(t);
                else if (json_is_string(t)) {
                    const char *s = json_string_value(t);
                    if (strcmp(s, "NaN") == 0)
                        d = NAN;
                    else if (strcmp(s, "Infinity") == 0)
                        d = INFINITY;
                    else if (strcmp(s, "-Infinity") == 0)
                        d = -INFINITY;
                    else {
                        char *end;
                        d = strtod(s, &end);
                        okv = *s != '\0' && *end == '\0' && isfinite(d);
                    }
                } else
                    okv = false;
                if (!okv || (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))) {
                    decode_fail(g, "float", "temperature");
                    goto out;
                }
                g->has_temp = true;
                g->temperature = (float)d;
            }
        }
    }
    ok = true;
out:
    json_decref(root);
    return ok;
}

/* ValidateAll() of maas-gateway.pb.validate.go, message for message. */
static void validate(const struct gen_req *g, struct sbuf *msg)
{
    struct sbuf top = {0}, sub = {0}, par = {0};
    size_t model_runes = g->model.p ? utf8_runes(g->model.p, g->model.n) : 0;
    if (model_runes < 2 || model_runes > 150)
        sbuf_adds(&top, "invalid MaasRequest.Model: value length must be between 2 and 150 "
                        "runes, inclusive");
    if (!g->has_request) {
        if (top.len)
            sbuf_adds(&top, "; ");
        sbuf_adds(&top, "invalid MaasRequest.Request: value is required");
    } else {
        size_t prompt_runes = g->prompt.p ? utf8_runes(g->prompt.p, g->prompt.n) : 0;
        if (prompt_runes < 2)
            sbuf_adds(&sub, "invalid MaasGenerateStreamRequest.Prompt: value length must be at "
                            "least 2 runes");
        if (g->has_params) {
            uint32_t m = g->has_max ? g->max_new_tokens : 0;
            if (m < 1 || m >= 2048)
                sbuf_adds(&par, "invalid MaasGenerateRequestParams.MaxNewTokens: value must be "
                                "inside range [1, 2048)");
            /* float32 comparison, as in Go: 0.99999999 rounds to 1 and fails; NaN passes. */
            if (g->has_temp && (g->temperature < 0.0f || g->temperature >= 1.0f)) {
                if (par.len)
                    sbuf_adds(&par, "; ");
                sbuf_adds(&par, "invalid MaasGenerateRequestParams.Temperature: value must be "
                                "inside range [0, 1)");
            }
            if (par.len) {
                if (sub.len)
                    sbuf_adds(&sub, "; ");
                sbuf_adds(&sub, "invalid MaasGenerateStreamRequest.Params: embedded message "
                                "failed validation | caused by: ");
                sbuf_add(&sub, par.p, par.len);
            }
        }
        if (sub.len) {
            if (top.len)
                sbuf_adds(&top, "; ");
            sbuf_adds(&top, "invalid MaasRequest.Request: embedded message failed validation | "
                            "caused by: ");
            sbuf_add(&top, sub.p, sub.len);
        }
    }
    if (top.len) {
        sbuf_adds(msg, "validation error: ");
        sbuf_add(msg, top.p, top.len);
    }
    sbuf_free(&top);
    sbuf_free(&sub);
    sbuf_free(&par);
}

static bool str_is(const struct str *s, const char *want)
{
    return s->p && s->n == strlen(want) && memcmp(s->p, want, s->n) == 0;
}

/* ------------------------------------------------------------------ */
/* endpoints                                                           */
/* ------------------------------------------------------------------ */

static const char *friendly(int status);

static enum MHD_Result handle_token(struct request *rq)
{
    const char *authz =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *ctype =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    bool form = ctype && strncasecmp(ctype, "application/x-www-form-urlencoded", 33) == 0 &&
                (ctype[33] == '\0' || ctype[33] == ';' || ctype[33] == ' ');
    const char *body = rq->in.p ? rq->in.p : "";
    bool ok = basic_auth_matches(authz, g_cfg.client_id, g_cfg.client_secret);
    if (!authz && form) {
        /* client_secret_post */
        char id[512], secret[512];
        ok = form_get(body, rq->in.len, "client_id", id, sizeof id) &&
             form_get(body, rq->in.len, "client_secret", secret, sizeof secret) &&
             strcmp(id, g_cfg.client_id) == 0 && strcmp(secret, g_cfg.client_secret) == 0;
    }
    if (!ok)
        return send_error(rq, 401, "client authentication failed", SHAPE_AUTO, false, NULL);
    if (!form)
        return send_error(rq, 400, "Content-Type must be application/x-www-form-urlencoded",
                          SHAPE_AUTO, false, NULL);
    char grant[64];
    if (!form_get(body, rq->in.len, "grant_type", grant, sizeof grant) ||
        strcmp(grant, "client_credentials") != 0) {
        json_t *doc = json_pack("{s:s, s:s}", "error", "unsupported_grant_type",
                                "error_description", "grant_type must be client_credentials");
        return send_json(rq, 400, doc, NULL);
    }
    if (chaos_token_refused())
        return send_error(rq, 503, friendly(503), SHAPE_AUTO, true, NULL);
    char *token = token_issue(rq->f.expire_token ? 0 : chaos_token_lifetime(rq));
    if (!token)
        return MHD_NO;
    atomic_fetch_add(&g_stats.tokens_issued, 1);
    json_t *doc = json_pack("{s:s, s:o, s:s}", "access_token", token, "expires_in",
                            chaos_expires_in(rq), "token_type", "Bearer");
    free(token);
    static const char *const headers[] = {"Cache-Control", "no-store", "Pragma", "no-cache", NULL};
    return send_json(rq, 200, doc, headers);
}

/* NULL when the bearer token is good; else the 401 message. */
static const char *bearer_problem(struct request *rq)
{
    const char *authz =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    switch (token_check(authz, rq->f.expire_token)) {
    case TOKEN_VALID:
        return NULL;
    case TOKEN_MISSING:
        return "Request unauthenticated with bearer";
    case TOKEN_MALFORMED:
        return "bad authorization header: want \"Bearer <token>\"";
    case TOKEN_EXPIRED:
        return "invalid token: token is expired";
    case TOKEN_UNKNOWN:
        break;
    }
    return "invalid token";
}

static enum MHD_Result handle_models(struct request *rq)
{
    const char *why = bearer_problem(rq);
    if (why)
        return send_error(rq, 401, why, SHAPE_AUTO, false, NULL);
    json_t *list = json_array();
    for (size_t i = 0; i < g_nmodels; i++)
        json_array_append_new(list, json_pack("{s:s, s:s, s:s}", "model_name",
                                               g_models[i].model_name, "product_id",
                                               g_models[i].product_id, "product_name",
                                               g_models[i].product_name));
    return send_json(rq, 200, json_pack("{s:o}", "models", list), NULL);
}

static enum MHD_Result handle_generate(struct request *rq)
{
    const char *ctype =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ctype || strcmp(ctype, "application/json") != 0) {
        static const char text[] = "Invalid Content-type";
        char *body = strdup(text);
        return send_body(rq, 415, "text/plain", body, sizeof text - 1, NULL);
    }
    struct gen_req *g = &rq->g;
    if (!g->decoded)
        return send_error(rq, 400, g->decode_err, SHAPE_BARE, false, NULL);
    const char *why = bearer_problem(rq);
    if (why)
        return send_error(rq, 401, why, SHAPE_AUTO, false, NULL);

    struct sbuf msg = {0};
    validate(g, &msg);
    if (msg.len || msg.oom) {
        char *m = sbuf_take(&msg);
        enum MHD_Result r =
            send_error(rq, 400, m ? m : "validation error", SHAPE_AUTO, false, NULL);
        free(m);
        return r;
    }
    bool found = false;
    for (size_t i = 0; i < g_nmodels && !found; i++)
        found = str_is(&g->model, g_models[i].model_name) &&
                str_is(&g->product_name, g_models[i].product_name) &&
                str_is(&g->product_id, g_models[i].product_id);
    if (!found)
        return send_error(rq, 400, "validation error: can't find requested product", SHAPE_AUTO,
                          false, NULL);
    if (!str_is(&g->account, g_cfg.cloud_account))
        return send_error(rq, 403,
                          "permission denied: cloudAccountId is not the caller's cloud account",
                          SHAPE_AUTO, false, NULL);

    gen_plan_make(&rq->plan, g->model.p, g->model.n, g->prompt.p, g->prompt.n, g->has_temp,
                  g->temperature, g->has_params && g->has_max, g->max_new_tokens, rq->f.tokens);
    rq->kind = BODY_STREAM;
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, body_reader, rq,
                                          body_reader_free);
    if (!r)
        return MHD_NO;
    rq->refs++;
    atomic_fetch_add(&g_stats.streams_active, 1);
    atomic_fetch_add(&g_stats.generations, 1);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    {
        const char *headers[7] = {NULL};
        char rate[3][128];
        size_t h = rate_headers(&rq->f, rate, headers);
        for (size_t i = 0; i < h; i += 2)
            MHD_add_response_header(r, headers[i], headers[i + 1]);
        if (rq->f.retry_after[0])
            MHD_add_response_header(r, "Retry-After", rq->f.retry_after);
    }
    return queue(rq, 200, r);
}

/* The User-Agent of the last API request, so that tests can see what clients send. */
static pthread_mutex_t ua_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_user_agent[256];

static void record_user_agent(struct MHD_Connection *conn)
{
    const char *ua = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_USER_AGENT);
    pthread_mutex_lock(&ua_lock);
    snprintf(last_user_agent, sizeof last_user_agent, "%s", ua ? ua : "");
    pthread_mutex_unlock(&ua_lock);
}

/* The Grpc-Timeout of the last generation ("" without one): the deadline a client passed on. */
static char last_grpc_timeout[64];

static void record_grpc_timeout(struct MHD_Connection *conn)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Grpc-Timeout");
    pthread_mutex_lock(&ua_lock);
    snprintf(last_grpc_timeout, sizeof last_grpc_timeout, "%s", v ? v : "");
    pthread_mutex_unlock(&ua_lock);
}

static json_t *stats_json(void)
{
    char ua[sizeof last_user_agent], gt[sizeof last_grpc_timeout];
    json_t *o;
    pthread_mutex_lock(&ua_lock);
    memcpy(ua, last_user_agent, sizeof ua);
    memcpy(gt, last_grpc_timeout, sizeof gt);
    pthread_mutex_unlock(&ua_lock);
    o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
                     "token_requests", (json_int_t)atomic_load(&g_stats.token_requests),
                     "tokens_issued", (json_int_t)atomic_load(&g_stats.tokens_issued),
                     "models_requests", (json_int_t)atomic_load(&g_stats.models_requests),
                     "generations", (json_int_t)atomic_load(&g_stats.generations),
                     "generate_requests", (json_int_t)atomic_load(&g_stats.generate_requests),
                     "unauthorized", (json_int_t)atomic_load(&g_stats.unauthorized),
                     "connections_opened", (json_int_t)atomic_load(&g_stats.connections_opened),
                     "connections_open", (json_int_t)atomic_load(&g_stats.connections_open),
                     "streams_active", (json_int_t)atomic_load(&g_stats.streams_active),
                     "last_user_agent", ua);
    if (o) {
        json_object_set_new(o, "last_grpc_timeout", json_string(gt));
        json_object_set_new(o, "api_connections_open",
                            json_integer((json_int_t)(atomic_load(&g_stats.connections_open) -
                                                      atomic_load(&g_stats.token_connections_open))));
        json_object_set_new(o, "token_connections_open",
                            json_integer((json_int_t)atomic_load(&g_stats.token_connections_open)));
        json_object_set_new(o, "token_connections_opened",
                            json_integer((json_int_t)atomic_load(&g_stats.token_connections_opened)));
        json_object_set_new(o, "random_faults",
                            json_integer((json_int_t)atomic_load(&g_stats.random_faults)));
    }
    return o;
}

static enum route fault_path(const char *p)
{
    enum route r = route_of(p);
    return r == ROUTE_TOKEN || r == ROUTE_MODELS || r == ROUTE_GENERATE ? r : ROUTE_UNKNOWN;
}

static enum MHD_Result handle_fault_queue(struct request *rq)
{
    json_error_t jerr;
    json_t *root = rq->in.len ? json_loadb(rq->in.p, rq->in.len, 0, &jerr) : NULL;
    char err[200] = "";
    json_t *path = json_object_get(root, "path");
    json_t *spec = json_object_get(root, "fault");
    json_t *count = json_object_get(root, "count");
    long n = 1;
    struct faults f;
    faults_init(&f);
    enum route r = ROUTE_UNKNOWN;
    if (!json_is_object(root))
        snprintf(err, sizeof err, "body must be a JSON object {\"path\", \"fault\", \"count\"}");
    else if (!json_is_string(path) || (r = fault_path(json_string_value(path))) == ROUTE_UNKNOWN)
        snprintf(err, sizeof err, "path must be one of /v1/maas/generatestream, /v1/maas/models, "
                                  "/oauth2/token");
    else if (!json_is_string(spec))
        snprintf(err, sizeof err, "fault must be a string NAME or NAME=VALUE");
    else if (count && !json_is_null(count) &&
             (!json_is_integer(count) || json_integer_value(count) < 1 ||
              json_integer_value(count) > 1000000000))
        snprintf(err, sizeof err, "count must be an integer >= 1");
    else {
        if (json_is_integer(count))
            n = (long)json_integer_value(count);
        if (!faults_parse_spec(&f, json_string_value(spec), json_string_length(spec), err,
                               sizeof err)) {
            /* err is set */
        } else if (!fault_queue_push(r, &f, n))
            snprintf(err, sizeof err, "out of memory");
    }
    if (err[0]) {
        json_decref(root);
        return send_error(rq, 400, err, SHAPE_AUTO, false, NULL);
    }
    json_t *doc = json_pack("{s:{s:O, s:O, s:I}}", "queued", "path", path, "fault", spec, "count",
                            (json_int_t)n);
    json_decref(root);
    return send_json(rq, 200, doc, NULL);
}

static enum MHD_Result handle_control(struct request *rq)
{
    switch (rq->route) {
    case ROUTE_EMU_STATS:
        return send_json(rq, 200, stats_json(), NULL);
    case ROUTE_EMU_RESET:
        atomic_store(&g_stats.token_requests, 0);
        atomic_store(&g_stats.tokens_issued, 0);
        atomic_store(&g_stats.models_requests, 0);
        atomic_store(&g_stats.generations, 0);
        atomic_store(&g_stats.generate_requests, 0);
        atomic_store(&g_stats.unauthorized, 0);
        atomic_store(&g_stats.connections_opened, 0);
        atomic_store(&g_stats.token_connections_opened, 0);
        fault_queue_clear();
        return send_json(rq, 200, stats_json(), NULL);
    case ROUTE_EMU_EXPIRE:
        tokens_expire_all();
        return send_json(rq, 200, json_pack("{s:b}", "expired", 1), NULL);
    case ROUTE_EMU_FAULTS:
        return handle_fault_queue(rq);
    default:
        return send_error(rq, 404, "Not Found", SHAPE_BARE, false, NULL);
    }
}

/* ------------------------------------------------------------------ */
/* dispatch                                                            */
/* ------------------------------------------------------------------ */

static const char *friendly(int status)
{
    switch (status) {
    case 400: return "validation error: rejected by maas-emulator fault";
    case 401: return "invalid token: token is expired";
    case 403: return "permission denied";
    case 404: return "the requested model is not supported";
    case 429: return "rate limit exceeded, please retry later";
    case 500: return "internal error";
    case 502: return "upstream unavailable";
    case 503: return EMU_CAPACITY_MSG;
    case 504: return "deadline exceeded";
    default: return "error";
    }
}

static const char *expected_method(enum route r)
{
    switch (r) {
    case ROUTE_MODELS:
    case ROUTE_EMU_STATS:
        return "GET";
    case ROUTE_UNKNOWN:
        return NULL;
    default:
        return "POST";
    }
}

/* Gather faults and decode the body once per request. */
static void prepare(struct request *rq)
{
    rq->prepared = true;
    if (rq->route != ROUTE_TOKEN && rq->route != ROUTE_MODELS && rq->route != ROUTE_GENERATE)
        return;
    if (rq->route == ROUTE_GENERATE) {
        faults_merge(&rq->f, &g_cfg.cli_faults);
        faults_random_take(&rq->f);
    }
    fault_queue_take(rq->route, &rq->f);
    chaos_prepare(rq);
    if (rq->route == ROUTE_GENERATE && !rq->too_large) {
        rq->g.decoded = decode_body(&rq->g, rq->in.p ? rq->in.p : "", rq->in.len);
        if (rq->g.decoded && rq->g.prompt.p &&
            !faults_parse_prompt(&rq->f, rq->g.prompt.p, rq->g.prompt.n, rq->fault_err,
                                 sizeof rq->fault_err))
            rq->fault_bad = true;
    }
}

static enum MHD_Result respond(struct request *rq)
{
    const char *want = expected_method(rq->route);
    if (!want)
        return send_error(rq, 404, "Not Found", SHAPE_BARE, false, NULL);
    if (strcmp(rq->method, want) != 0)
        return send_error(rq, 405, "Method Not Allowed", SHAPE_BARE, false, NULL);
    if (rq->too_large)
        return send_error(rq, 413, "request body too large: the limit is 16777216 bytes",
                          SHAPE_AUTO, false, NULL);
    if (rq->fault_bad)
        return send_error(rq, 400, rq->fault_err, SHAPE_AUTO, false, NULL);
    if (rq->f.drop_after == 0) {
        /* Cut before any answer, status line included (a reset by a proxy). */
        rq->end = "dropped";
        return MHD_NO;
    }
    if (rq->f.status)
        return send_error(rq, (unsigned)rq->f.status, friendly(rq->f.status), SHAPE_AUTO, true,
                          rq->f.retry_after[0] ? rq->f.retry_after : NULL);
    switch (rq->route) {
    case ROUTE_TOKEN:
        return handle_token(rq);
    case ROUTE_MODELS:
        return handle_models(rq);
    case ROUTE_GENERATE:
        return handle_generate(rq);
    default:
        return handle_control(rq);
    }
}

/* Per TCP connection: has it carried an API request yet? */
struct conn_ctx {
    bool api;
    bool token_listener; /* accepted by the token endpoint's listener */
    bool gone;           /* no longer counted as open (see conn_gone) */
};

/*
 * Count a connection as closed once. A request that ends with an error
 * (the client hung up on a parked stream, a dropped or cut stream) dooms its
 * connection, but MHD may report the close itself (NOTIFY_CLOSED) much
 * later for a connection that was suspended: counting it at the request's
 * end keeps connections_open what the client sees.
 */
static void conn_gone(struct conn_ctx *cc)
{
    if (!cc || cc->gone)
        return;
    cc->gone = true;
    if (cc->token_listener)
        atomic_fetch_sub(&g_stats.token_connections_open, 1);
    atomic_fetch_sub(&g_stats.connections_open, 1);
}

/* connections_opened counts connections that carried at least one API
 * request (token_connections_opened, one token request), so that a test
 * reading /emulator/stats on connections of its own does not change what it
 * reads (connections_open counts them all). */
static void count_api_connection(struct MHD_Connection *conn, atomic_long *counter)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn_ctx *cc = ci ? ci->socket_context : NULL;
    if (cc && !cc->api) {
        cc->api = true;
        atomic_fetch_add(counter, 1);
    }
}

enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                           const char *method, const char *version, const char *upload_data,
                           size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    struct request *rq = *con_cls;
    if (!rq) {
        rq = request_new(conn, url, method);
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        /* Each host answers its own paths (the control endpoints both): a
         * token request sent to the API, or the reverse, is a 404. */
        if ((intptr_t)cls == LISTENER_TOKEN
                ? rq->route == ROUTE_MODELS || rq->route == ROUTE_GENERATE
                : rq->route == ROUTE_TOKEN)
            rq->route = ROUTE_UNKNOWN;
        switch (rq->route) {
        case ROUTE_TOKEN:
            atomic_fetch_add(&g_stats.token_requests, 1);
            count_api_connection(conn, &g_stats.token_connections_opened);
            record_user_agent(conn);
            break;
        case ROUTE_MODELS:
            atomic_fetch_add(&g_stats.models_requests, 1);
            count_api_connection(conn, &g_stats.connections_opened);
            record_user_agent(conn);
            break;
        case ROUTE_GENERATE:
            atomic_fetch_add(&g_stats.generate_requests, 1);
            count_api_connection(conn, &g_stats.connections_opened);
            record_user_agent(conn);
            record_grpc_timeout(conn);
            break;
        default:
            break;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            unsigned long long v = strtoull(cl, &end, 10);
            if (*end == '\0' && v > EMU_MAX_BODY) {
                /* Refuse before reading: MHD closes the connection after this. */
                rq->too_large = true;
                return respond(rq);
            }
        }
        return MHD_YES;
    }
    sched_resumed(&rq->w);
    if (rq->w.aborted || rq->w.hangup)
        return MHD_NO;
    if (*upload_data_size) {
        if (!rq->answered && !rq->too_large) {
            if (*upload_data_size > EMU_MAX_BODY - rq->in.len) {
                rq->too_large = true;
                sbuf_free(&rq->in);
            } else
                sbuf_add(&rq->in, upload_data, *upload_data_size);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rq->answered)
        return MHD_YES;
    if (rq->in.oom)
        return MHD_NO;
    if (!rq->prepared) {
        prepare(rq);
        if (rq->f.no_answer && !rq->fault_bad && !rq->too_large) {
            /* Read, never answered: parked until the client leaves (or shutdown). */
            rq->end = "no-answer";
            if (!sched_wait(&rq->w, -1, true))
                return MHD_NO;
            return MHD_YES;
        }
        long wait = rq->f.first_byte_delay_ms > 0 && !rq->fault_bad ? rq->f.first_byte_delay_ms : 0;
        if (rq->route == ROUTE_TOKEN)
            wait += g_cfg.token_delay_ms;
        if (wait > 0) {
            if (!sched_wait(&rq->w, wait, wait >= EMU_WATCH_MIN_MS))
                return MHD_NO;
            return MHD_YES;
        }
    }
    enum MHD_Result ret = respond(rq);
    sbuf_free(&rq->in); /* decoded already; a faulted body lives in rq->out */
    return ret;
}

void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                  enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        conn_gone(ci ? ci->socket_context : NULL);
    }
    struct request *rq = *con_cls;
    if (!rq)
        return;
    *con_cls = NULL;
    rq->toe = toe;
    sched_resumed(&rq->w);
    request_unref(rq);
}

void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                   enum MHD_ConnectionNotificationCode toe)
{
    (void)conn;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn_ctx *cc = calloc(1, sizeof *cc);
        *socket_context = cc;
        if (cc && (intptr_t)cls == LISTENER_TOKEN) {
            cc->token_listener = true;
            atomic_fetch_add(&g_stats.token_connections_open, 1);
        }
        long open = atomic_fetch_add(&g_stats.connections_open, 1) + 1;
        static uint64_t warned;
        if (open >= (long)g_cfg.conn_limit && now_ms() - warned > 10000) {
            warned = now_ms();
            emu_log("connection limit reached: %ld connections open (limit %u, open-file limit "
                    "%llu); new connections wait in the listen backlog; raise `ulimit -n`",
                    open, g_cfg.conn_limit, g_cfg.nofile);
        }
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct conn_ctx *cc = *socket_context;
        if (cc)
            conn_gone(cc);
        else
            atomic_fetch_sub(&g_stats.connections_open, 1);
        free(cc);
        *socket_context = NULL;
    }
}
