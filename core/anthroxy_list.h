/* anthroxy_list.h - the one intrusive doubly linked list, after h2o's linklist.h and libuv's
 * queue.h: a circular list with a sentinel, so insert and unlink never test for an end.
 *
 * Embed a `struct ax_list` in the element and a second one, the anchor, in the owner:
 *
 *     struct ax_list conns;               (the owner's anchor: ax_list_init(&conns))
 *     struct conn { struct ax_list link; ... };
 *     ax_list_push_back(&conns, &c->link);
 *     AX_LIST_FOREACH_SAFE(n, next, &conns) { struct conn *c = AX_LIST_ENTRY(n, struct conn, link);
 * ... } ax_list_unlink(&c->link);           (safe twice: an unlinked node points at itself)
 *
 * An element is on at most one list per link it embeds; ax_list_linked says whether it is. */
#ifndef ANTHROXY_LIST_H
#define ANTHROXY_LIST_H

#include <stddef.h>

struct ax_list {
    struct ax_list *next, *prev;
};

#define AX_LIST_ENTRY(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

static inline void ax_list_init(struct ax_list *l)
{
    l->next = l->prev = l;
}

static inline int ax_list_empty(const struct ax_list *anchor)
{
    return anchor->next == anchor;
}

static inline int ax_list_linked(const struct ax_list *node)
{
    return node->next != node;
}

static inline void ax_list_insert_before(struct ax_list *pos, struct ax_list *node)
{
    node->prev = pos->prev;
    node->next = pos;
    pos->prev->next = node;
    pos->prev = node;
}

/* at the tail: FIFO order with ax_list_first */
static inline void ax_list_push_back(struct ax_list *anchor, struct ax_list *node)
{
    ax_list_insert_before(anchor, node);
}

/* at the head: newest-first order (an LRU's most recent end) */
static inline void ax_list_push_front(struct ax_list *anchor, struct ax_list *node)
{
    ax_list_insert_before(anchor->next, node);
}

static inline void ax_list_unlink(struct ax_list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = node;
}

/* the first and last element, NULL when empty */
static inline struct ax_list *ax_list_first(const struct ax_list *anchor)
{
    return anchor->next == anchor ? NULL : anchor->next;
}

static inline struct ax_list *ax_list_last(const struct ax_list *anchor)
{
    return anchor->prev == anchor ? NULL : anchor->prev;
}

#define AX_LIST_FOREACH(node, anchor)                                                              \
    for ((node) = (anchor)->next; (node) != (anchor); (node) = (node)->next)

/* iteration that survives unlinking (or freeing) the current node */
#define AX_LIST_FOREACH_SAFE(node, tmp, anchor)                                                    \
    for ((node) = (anchor)->next, (tmp) = (node)->next; (node) != (anchor);                        \
         (node) = (tmp), (tmp) = (node)->next)

#endif
