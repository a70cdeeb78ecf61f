// The notification service: turns events into notifications for their user.
//
// - on `user.registered`, `order.confirmed`, `order.cancelled` → a notification
// - `GET /api/notifications?limit=N&after=ID` (token) → `{items, next}`, the caller's
//   notifications, oldest first
// - with `config.webhook_url` set, each notification is also POSTed there as a signed
//   CloudEvent (Standard Webhooks: HMAC-SHA256 with the `webhook_secret` secret), with
//   its id as the idempotency key. A failed send fails the event: the host retries it
//   with backoff and dead-letters it after `max_deliver`; nothing is stored until the
//   webhook took it, and every retry sends the same id.
import { service, HttpError, Response, kv, auth, config, webhooks } from '../js/microhost.js';

/** Where a user's notifications are kept: `notif/{user}/{notification id}`. */
const byUser = (user) => `notif/${user}/`;

const money = (cents) => {
  const whole = Math.trunc(cents / 100);
  const rest = String(Math.abs(cents % 100)).padStart(2, '0');
  return `${whole}.${rest}`;
};

function handle(req) {
  const user = auth.requireSubject(req);
  const segments = req.segments();
  if (segments.length === 2 && segments[0] === 'api' && segments[1] === 'notifications') {
    if (req.method !== 'GET') throw HttpError.methodNotAllowed(req.method, 'GET');
    const page = req.page();
    return Response.json(200, kv.open().pageJson(byUser(user), page));
  }
  throw HttpError.notFound(`no notification resource at ${JSON.stringify(req.path)}`);
}

/** A notification's id: the time of its event and the event's id, the same on every
 * delivery of the event (so a retry stores and sends the same notification). */
function notificationId(event) {
  const ms = Date.parse(event.time);
  const time = (Number.isFinite(ms) ? ms : 0).toString(16).padStart(12, '0');
  return time + event.id.replace(/[^0-9a-zA-Z]/g, '').slice(0, 20);
}

async function onEvent(event) {
  const data = event.json();
  const text = (field) => (typeof data[field] === 'string' ? data[field] : '');
  const userId = text('user_id');
  if (!userId) throw new Error(`${event.topic} event without user_id`);
  let message;
  let orderId = null;
  switch (event.topic) {
    case 'user.registered':
      message = `Welcome, ${text('name')}!`;
      break;
    case 'order.confirmed':
      orderId = text('order_id');
      message = `Your order ${orderId} is confirmed. Total: ${money(Number(data.total_cents ?? 0))}`;
      break;
    case 'order.cancelled':
      orderId = text('order_id');
      message = `Your order ${orderId} was cancelled: ${typeof data.reason === 'string' ? data.reason : 'no reason given'}`;
      break;
    default:
      throw new Error(`unexpected topic ${JSON.stringify(event.topic)}`);
  }
  const notification = { id: notificationId(event), user_id: userId, kind: event.topic, message };
  if (orderId !== null) notification.order_id = orderId;
  const published = Date.parse(event.time);
  notification.created_at_ms = Number.isFinite(published) ? published : Date.now();
  kv.open().setJson(`${byUser(userId)}${notification.id}`, notification);
  const url = config('webhook_url');
  if (url) {
    const secret = config('webhook_secret');
    if (!secret) throw new Error('config webhook_url is set but the secret webhook_secret is not');
    await webhooks.send(url, secret, {
      id: notification.id,
      type: 'notification.created',
      source: 'notification',
      time: new Date(notification.created_at_ms).toISOString(),
      data: notification,
      traceparent: event.traceparent,
    });
  }
}

export const { subscriber, lifecycle } = service({ handle, onEvent });
