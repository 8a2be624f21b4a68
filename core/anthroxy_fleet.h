/* anthroxy_fleet.h - the set of upstreams a server fronts, and the choice of one per request.
 *
 * A fleet is one or more named upstreams (core/upstream.c clients, each with its own probe),
 * declared by --upstream NAME=URL,... or, for the fleet of one, the plain --upstream URL
 * (named "default"). Routing takes the client's model name through --model-map (MODEL,
 * MODEL@UPSTREAM, @UPSTREAM) or the names on_route chose, finds the upstreams serving that
 * model (declared patterns, else the ids their /v1/models lists), and among those replicas
 * picks one: by rendezvous hashing of the session key (a session keeps its replica, so its
 * prompt prefix stays cached; adding or removing a replica moves only that replica's share)
 * under a bounded-load rule, or round-robin, or least-loaded. Health is the probe's state
 * plus live failures, which put a member out for a backoff; a fleet-wide retry budget caps
 * failovers. Everything runs on the loop thread. */
#ifndef ANTHROXY_FLEET_H
#define ANTHROXY_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "anthroxy_config.h"
#include "anthroxy_error.h"

struct ax_upstream;
struct ax_fleet;

#define AX_FLEET_MAX 64 /* upstreams in one fleet (a tried set is a 64-bit mask) */

/* Creates every member's upstream client on loop from cfg (borrowed: it must outlive the
 * fleet). Returns 0, or AX_EINVAL / AX_ENOMEM with err naming the upstream. */
int ax_fleet_new(uv_loop_t *loop, const struct ax_config *cfg, struct ax_fleet **out,
                 struct ax_error *err);
/* Closes every member (ax_upstream_close); on_closed (may be NULL) runs once all are closed,
 * then the fleet is freed. */
void ax_fleet_close(struct ax_fleet *f, void (*on_closed)(void *ud), void *ud);

/* Starts each member's background probe; on_info(ud, member index) runs after a probe of
 * that member changed what it knows (may be NULL). */
void ax_fleet_probe_start(struct ax_fleet *f, uint64_t interval_ms,
                          void (*on_info)(void *ud, size_t i), void *ud);
/* 1 while some member has had no probe answer yet (its models are unknown). */
int ax_fleet_probes_pending(const struct ax_fleet *f);

size_t ax_fleet_count(const struct ax_fleet *f);
struct ax_upstream *ax_fleet_upstream(const struct ax_fleet *f, size_t i); /* 0: the default */
const char *ax_fleet_name(const struct ax_fleet *f, size_t i);
const char *ax_fleet_kind(const struct ax_fleet *f, size_t i); /* declared kind, or "auto" */
/* 1 when member i speaks llama-server's dialect: declared so, or probed so with no other
 * kind declared. */
int ax_fleet_llama_server(const struct ax_fleet *f, size_t i);

/* One request's choice. */
struct ax_route {
    size_t idx;               /* member chosen */
    char upstream_model[256]; /* the model name to send it */
    uint64_t tried;           /* members tried so far (bit i), failovers excluded these */
    char why[32];             /* "affinity", "moved", "round-robin", "least-loaded", "only" */
};

struct ax_route_req {
    const char *client_model; /* as the client named it (after on_request) */
    const char *session_key;  /* affinity key; NULL or "default": no session */
    const char *request_id;   /* spreads requests without a session */
    const char *const *names; /* upstream names on_route chose (NULL-terminated), or NULL */
    const char *model;        /* upstream model on_route chose, or NULL */
};

/* Picks a member for rq among those not in out->tried (set it to 0 for a first choice; a
 * failover passes the previous route back). Returns 0 and fills out (adding idx to tried),
 * or AX_ENOTFOUND when no untried candidate is left, or AX_EINVAL with err (400/500) when the
 * names or the model map name no upstream. Down members are skipped while others are
 * eligible; when all are down one is still tried, so a fleet of one behaves as before. */
int ax_fleet_route(struct ax_fleet *f, const struct ax_route_req *rq, struct ax_route *out,
                   struct ax_error *err);

/* Live health: ok 1 after an answer, 0 after a failure before the first byte (refused,
 * reset, timeout, 502/503/504), which puts the member out for a doubling backoff (1 s to
 * 30 s) and probes it now. */
void ax_fleet_report(struct ax_fleet *f, size_t i, int ok, uint64_t now_ms);
/* The retry budget: 1 (and spends it) when a failover may happen now, else 0. Each first
 * choice by ax_fleet_route deposits retry_budget; retry_min per second are always allowed. */
int ax_fleet_retry_take(struct ax_fleet *f, uint64_t now_ms);

/* {"upstreams": [{name, url, kind, state, healthy, load, running, queued, max, models,
 * failures, down_for_ms, requests}], "balance", "retries", "retries_denied"}, for /health.
 * healthy_out (may be NULL) gets the count of eligible members. */
cJSON *ax_fleet_health(const struct ax_fleet *f, uint64_t now_ms, int *healthy_out);
/* The third argument of on_route: {upstreams = [{name, kind, state, healthy, load, max,
 * models = [..]}]}. Caller owns it. */
cJSON *ax_fleet_route_view(const struct ax_fleet *f, uint64_t now_ms);

#endif
