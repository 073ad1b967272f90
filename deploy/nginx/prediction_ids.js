// The prediction and training ids a caller may send through the proxy (deploy/nginx/nginx.conf).
//
// Cog's runtime (coglet 0.23.1) makes /tmp/coglet/predictions/<id>/ from the id the caller sends,
// before any of the model's code runs: an id that is a path makes folders wherever the server's
// user may write, and one it cannot make a folder for (over 255 bytes, a NUL, a path through a
// file) takes a slot for good. Only [A-Za-z0-9_-]{1,64} passes, or no id (the runtime makes one).

var SAFE_ID = /^[A-Za-z0-9_-]{1,64}$/;

function refuse(r, id) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({
        detail: 'id ' + JSON.stringify(String(id)).slice(0, 80) + ' is not allowed: use 1 to 64 of A-Z a-z 0-9 _ -, or leave it out',
    }) + '\n');
}

// The endpoint the server does not serve ($cog_serves names the one it does): answered here. The
// runtime would take a prediction's inputs as train()'s arguments ("TypeError: train() got an
// unexpected keyword argument 'duration'").
function elsewhere(r) {
    var serves = r.variables.cog_serves;
    if (r.uri.split('/')[1] === serves) {
        return false;
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(404, JSON.stringify({
        detail: 'this server runs ' + serves + ', not ' + r.uri.split('/')[1] + ': use /' + serves
            + (serves === 'trainings' ? ' (predictions are served by the same image started without --x-mode train)'
                                      : ' (trainings are served by the same image started with --x-mode train)'),
    }) + '\n');
    return true;
}

// The id in a JSON body (POST /predictions, POST /trainings, PUT /predictions/<id>): checked (an
// unsafe id is refused first, whatever the endpoint), then the endpoint; then the request goes on
// to the server unchanged, except that POST /predictions with an id goes on
// as PUT /predictions/<id> (nginx.conf's @cog_put says why). A body that is not JSON goes on too:
// the runtime answers it as it answers any caller.
function check(r) {
    var text = r.requestText;
    var rewrite = null;
    if (text) {
        var body = null;
        try {
            body = JSON.parse(text);
        } catch (e) {
            body = null;
        }
        if (body !== null && typeof body === 'object' && body.id !== undefined && body.id !== null) {
            if (typeof body.id !== 'string' || !SAFE_ID.test(body.id)) {
                refuse(r, body.id);
                return;
            }
            if (r.method === 'POST' && /^\/predictions\/?$/.test(r.uri)) {
                rewrite = body.id;
            }
        }
    }
    if (elsewhere(r)) {
        return;
    }
    if (rewrite !== null) {
        r.variables.body_id = rewrite;
        r.internalRedirect('@cog_put');
        return;
    }
    r.internalRedirect('@cog');
}

export default {check};
