/* match.c - the sandbox's string.find/match/gmatch/gsub: Lua 5.4 patterns with a step budget.
 *
 * Lua's own matcher backtracks without bound inside one C call, where the count hook never
 * fires: ("a"):rep(30):find(("a*"):rep(12) .. "b") runs for minutes. This one implements the
 * pattern language of the Lua 5.4 manual (section 6.4.1: classes, sets, * + - ?, anchors,
 * captures, %b, %f, back-references) and the four functions' documented behaviour, and
 * charges every matcher step and every byte compared to the running hook's instruction
 * budget (ax__charge): past it the call raises the budget error like the hook does. */
#include "internal.h"

#include <ctype.h>
#include <string.h>

#include <lauxlib.h>

#define MAXDEPTH 200 /* nested matcher calls, as Lua's MAXCCALLS */
#define MAXCAPTURES 32
#define CHARGE_EVERY 256
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define SPECIALS "^$*+?.([%-"

struct mstate {
    const char *src_init, *src_end, *p_end;
    lua_State *L;
    int level, depth, steps;
    struct {
        const char *init;
        ptrdiff_t len;
    } cap[MAXCAPTURES];
};

static void step(struct mstate *ms, int n)
{
    ms->steps -= n;
    if (ms->steps <= 0) {
        ax__charge(ms->L, (uint64_t)(CHARGE_EVERY - ms->steps));
        ms->steps = CHARGE_EVERY;
    }
}

static const char *class_end(struct mstate *ms, const char *p)
{
    if (*p++ == '%') {
        if (p == ms->p_end)
            luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (p[-1] == '[') {
        if (*p == '^')
            p++;
        do { /* the first character of a set is literal, even ']' */
            if (p == ms->p_end)
                luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*(p++) == '%' && p < ms->p_end)
                p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

static int class_match(int c, int cl)
{
    int r;
    switch (tolower(cl)) {
    case 'a':
        r = isalpha(c);
        break;
    case 'c':
        r = iscntrl(c);
        break;
    case 'd':
        r = isdigit(c);
        break;
    case 'g':
        r = isgraph(c);
        break;
    case 'l':
        r = islower(c);
        break;
    case 'p':
        r = ispunct(c);
        break;
    case 's':
        r = isspace(c);
        break;
    case 'u':
        r = isupper(c);
        break;
    case 'w':
        r = isalnum(c);
        break;
    case 'x':
        r = isxdigit(c);
        break;
    default:
        return cl == c;
    }
    if (isupper(cl))
        r = !r;
    return r != 0;
}

/* p at '[', ec at its ']' */
static int set_match(int c, const char *p, const char *ec)
{
    int sig = 1;
    if (p[1] == '^') {
        sig = 0;
        p++;
    }
    while (++p < ec) {
        if (*p == '%') {
            p++;
            if (class_match(c, (unsigned char)*p))
                return sig;
        } else if (p[1] == '-' && p + 2 < ec) {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
                return sig;
        } else if ((unsigned char)*p == c) {
            return sig;
        }
    }
    return !sig;
}

static int single(struct mstate *ms, const char *s, const char *p, const char *ep)
{
    int c;
    if (s >= ms->src_end)
        return 0;
    c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return 1;
    case '%':
        return class_match(c, (unsigned char)p[1]);
    case '[':
        return set_match(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

static const char *do_match(struct mstate *ms, const char *s, const char *p);

static const char *balance(struct mstate *ms, const char *s, const char *p)
{
    int b, e, depth = 1;
    if (p >= ms->p_end - 1)
        luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= ms->src_end || *s != *p)
        return NULL;
    b = *p;
    e = p[1];
    while (++s < ms->src_end) {
        step(ms, 1);
        if (*s == e) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == b) {
            depth++;
        }
    }
    return NULL;
}

static const char *expand_max(struct mstate *ms, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (single(ms, s + i, p, ep))
        i++;
    step(ms, (int)(i / 8) + 1);
    for (; i >= 0; i--) {
        const char *r = do_match(ms, s + i, ep + 1);
        if (r != NULL)
            return r;
    }
    return NULL;
}

static const char *expand_min(struct mstate *ms, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = do_match(ms, s, ep + 1);
        if (r != NULL)
            return r;
        if (!single(ms, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *cap_open(struct mstate *ms, const char *s, const char *p, ptrdiff_t what)
{
    const char *r;
    if (ms->level >= MAXCAPTURES)
        luaL_error(ms->L, "too many captures");
    ms->cap[ms->level].init = s;
    ms->cap[ms->level].len = what;
    ms->level++;
    if ((r = do_match(ms, s, p)) == NULL)
        ms->level--;
    return r;
}

static const char *cap_close(struct mstate *ms, const char *s, const char *p)
{
    int l;
    const char *r;
    for (l = ms->level - 1; l >= 0; l--)
        if (ms->cap[l].len == CAP_UNFINISHED)
            break;
    if (l < 0)
        luaL_error(ms->L, "invalid pattern capture");
    ms->cap[l].len = s - ms->cap[l].init;
    if ((r = do_match(ms, s, p)) == NULL)
        ms->cap[l].len = CAP_UNFINISHED;
    return r;
}

static int cap_index(struct mstate *ms, int c)
{
    int l = c - '1';
    if (l < 0 || l >= ms->level || ms->cap[l].len == CAP_UNFINISHED)
        luaL_error(ms->L, "invalid capture index %%%d", l + 1);
    return l;
}

static const char *backref(struct mstate *ms, const char *s, int c)
{
    int l = cap_index(ms, c);
    size_t len = (size_t)ms->cap[l].len;
    step(ms, (int)(len / 32) + 1);
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->cap[l].init, s, len) == 0)
        return s + len;
    return NULL;
}

static const char *do_match(struct mstate *ms, const char *s, const char *p)
{
    const char *ep, *r;

    if (ms->depth-- == 0)
        luaL_error(ms->L, "pattern too complex");
    step(ms, 1);
    while (p != ms->p_end) {
        switch (*p) {
        case '(':
            if (p + 1 < ms->p_end && p[1] == ')')
                s = cap_open(ms, s, p + 2, CAP_POSITION);
            else
                s = cap_open(ms, s, p + 1, CAP_UNFINISHED);
            goto out;
        case ')':
            s = cap_close(ms, s, p + 1);
            goto out;
        case '$':
            if (p + 1 == ms->p_end) {
                s = s == ms->src_end ? s : NULL;
                goto out;
            }
            goto plain;
        case '%':
            if (p[1] == 'b') {
                if ((s = balance(ms, s, p + 2)) == NULL)
                    goto out;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                int prev;
                p += 2;
                if (*p != '[')
                    luaL_error(ms->L, "missing '[' after '%%f' in pattern");
                ep = class_end(ms, p);
                prev = s == ms->src_init ? 0 : (unsigned char)s[-1];
                if (!set_match(prev, p, ep - 1) &&
                    set_match(s < ms->src_end ? (unsigned char)*s : 0, p, ep - 1)) {
                    p = ep;
                    continue;
                }
                s = NULL;
                goto out;
            }
            if (isdigit((unsigned char)p[1])) {
                if ((s = backref(ms, s, (unsigned char)p[1])) == NULL)
                    goto out;
                p += 2;
                continue;
            }
            goto plain;
        default:
        plain:
            ep = class_end(ms, p);
            if (!single(ms, s, p, ep)) {
                if (*ep == '*' || *ep == '?' || *ep == '-') { /* may match empty */
                    p = ep + 1;
                    continue;
                }
                s = NULL;
                goto out;
            }
            switch (*ep) {
            case '?':
                if ((r = do_match(ms, s + 1, ep + 1)) != NULL) {
                    s = r;
                    goto out;
                }
                p = ep + 1;
                continue;
            case '+':
                s = expand_max(ms, s + 1, p, ep);
                goto out;
            case '*':
                s = expand_max(ms, s, p, ep);
                goto out;
            case '-':
                s = expand_min(ms, s, p, ep);
                goto out;
            default:
                s++;
                p = ep;
                continue;
            }
        }
    }
out:
    ms->depth++;
    return s;
}

static void ms_init(struct mstate *ms, lua_State *L, const char *s, size_t ls, const char *p,
                    size_t lp)
{
    ms->L = L;
    ms->src_init = s;
    ms->src_end = s + ls;
    ms->p_end = p + lp;
    ms->steps = CHARGE_EVERY;
}

static void ms_reset(struct mstate *ms)
{
    ms->level = 0;
    ms->depth = MAXDEPTH;
}

static size_t push_one(struct mstate *ms, int i, const char *s, const char *e)
{
    if (i >= ms->level) {
        if (i != 0)
            luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(ms->L, s, (size_t)(e - s));
        return (size_t)(e - s);
    }
    if (ms->cap[i].len == CAP_UNFINISHED)
        luaL_error(ms->L, "unfinished capture");
    if (ms->cap[i].len == CAP_POSITION) {
        lua_pushinteger(ms->L, (ms->cap[i].init - ms->src_init) + 1);
        return 0;
    }
    lua_pushlstring(ms->L, ms->cap[i].init, (size_t)ms->cap[i].len);
    return (size_t)ms->cap[i].len;
}

static int push_all(struct mstate *ms, const char *s, const char *e)
{
    int i, n = ms->level == 0 && s != NULL ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (i = 0; i < n; i++)
        push_one(ms, i, s, e);
    return n;
}

static size_t start_at(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

static int no_specials(const char *p, size_t lp)
{
    size_t i;
    for (i = 0; i < lp; i++)
        if (p[i] != 0 && strchr(SPECIALS, p[i]) != NULL)
            return 0;
    return 1;
}

/* plain find, charged by the bytes it compares */
static const char *find_plain(lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
    const char *end, *c;
    if (lp == 0)
        return s;
    if (lp > ls)
        return NULL;
    end = s + (ls - lp) + 1; /* candidates start before end */
    while (s < end && (c = memchr(s, *p, (size_t)(end - s))) != NULL) {
        ax__charge(L, 1 + lp / 64);
        if (memcmp(c + 1, p + 1, lp - 1) == 0)
            return c;
        s = c + 1;
    }
    ax__charge(L, ls / 256);
    return NULL;
}

static int find_aux(lua_State *L, int find)
{
    size_t ls, lp, init;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *s1;
    struct mstate ms;
    int anchor;

    init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
        const char *f = find_plain(L, s + init, ls - init, p, lp);
        if (f == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (f - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(f - s) + lp));
        return 2;
    }
    anchor = *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    ms_init(&ms, L, s, ls, p, lp);
    s1 = s + init;
    do {
        const char *e;
        ms_reset(&ms);
        if ((e = do_match(&ms, s1, p)) != NULL) {
            if (find) {
                lua_pushinteger(L, (s1 - s) + 1);
                lua_pushinteger(L, e - s);
                return push_all(&ms, NULL, NULL) + 2;
            }
            return push_all(&ms, s1, e);
        }
    } while (s1++ < ms.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int l_find(lua_State *L)
{
    return find_aux(L, 1);
}

static int l_match(lua_State *L)
{
    return find_aux(L, 0);
}

struct gmatch {
    const char *src, *p, *last;
    struct mstate ms;
};

static int gmatch_step(lua_State *L)
{
    struct gmatch *g = lua_touserdata(L, lua_upvalueindex(3));
    const char *src;
    g->ms.L = L; /* the iterator may be called from another coroutine */
    for (src = g->src; src <= g->ms.src_end; src++) {
        const char *e;
        ms_reset(&g->ms);
        if ((e = do_match(&g->ms, src, g->p)) != NULL && e != g->last) {
            g->src = g->last = e;
            return push_all(&g->ms, src, e);
        }
    }
    return 0;
}

static int l_gmatch(lua_State *L)
{
    size_t ls, lp, init;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    struct gmatch *g;

    init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls)
        init = ls + 1; /* past the end: matches nothing */
    lua_settop(L, 2);
    g = lua_newuserdatauv(L, sizeof(*g), 0);
    ms_init(&g->ms, L, s, ls, p, lp);
    g->src = s + init;
    g->p = p;
    g->last = NULL;
    lua_pushcclosure(L, gmatch_step, 3); /* s and p stay alive as upvalues */
    return 1;
}

static void add_repl_string(struct mstate *ms, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = ms->L;
    size_t l;
    const char *news = lua_tolstring(L, 3, &l), *p;

    while ((p = memchr(news, '%', l)) != NULL) {
        luaL_addlstring(b, news, (size_t)(p - news));
        p++;
        if (*p == '%') {
            luaL_addchar(b, '%');
        } else if (*p == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*p)) {
            push_one(ms, *p - '1', s, e);
            luaL_tolstring(L, -1, NULL);
            lua_remove(L, -2);
            luaL_addvalue(b);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        l -= (size_t)(p + 1 - news);
        news = p + 1;
    }
    luaL_addlstring(b, news, l);
}

/* Adds the replacement of [s, e); returns whether it changed anything. */
static int add_repl(struct mstate *ms, luaL_Buffer *b, const char *s, const char *e, int tr)
{
    lua_State *L = ms->L;
    if (tr == LUA_TFUNCTION) {
        int n;
        lua_pushvalue(L, 3);
        n = push_all(ms, s, e);
        lua_call(L, n, 1);
    } else if (tr == LUA_TTABLE) {
        push_one(ms, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_repl_string(ms, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int l_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *last = NULL;
    int tr = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
    int anchor = *p == '^', changed = 0;
    struct mstate ms;
    luaL_Buffer b;

    luaL_argexpected(
        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
        "string/function/table");
    luaL_buffinit(L, &b);
    if (anchor) {
        p++;
        lp--;
    }
    ms_init(&ms, L, src, ls, p, lp);
    while (n < max_n) {
        const char *e;
        ms_reset(&ms);
        if ((e = do_match(&ms, src, p)) != NULL && e != last) {
            n++;
            changed = add_repl(&ms, &b, src, e, tr) | changed;
            src = last = e;
        } else if (src < ms.src_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void ax__match_open(lua_State *L)
{
    static const luaL_Reg f[] = {
        {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL}};
    luaL_setfuncs(L, f, 0);
}
