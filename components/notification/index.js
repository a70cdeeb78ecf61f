// The notification service: turns events into notifications for their user.
//
// - on `user.registered`, `order.confirmed`, `order.cancelled` → a notification
// - `GET /api/notifications?limit=N&after=ID` (token) → `{items, next}`, the caller's
//   notifications, oldest first
import { service, HttpError, Response, kv, auth, newId, nowMs } from '../js/microhost.js';

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

function onEvent(event) {
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
  const notification = { id: newId(), user_id: userId, kind: event.topic, message };
  if (orderId !== null) notification.order_id = orderId;
  notification.created_at_ms = nowMs();
  kv.open().setJson(`${byUser(userId)}${notification.id}`, notification);
}

export const { subscriber, lifecycle } = service({ handle, onEvent });
