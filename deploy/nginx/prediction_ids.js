// The prediction and training ids a caller may send through the proxy (deploy/nginx/nginx.conf).
//
// Cog's runtime (coglet 0.23.1) makes /tmp/coglet/predictions/<id>/ from the id the caller sends,
// before any of the model's code runs: an id that is a path makes folders wherever the server's
// user may write, and one it cannot make a folder for (over 255 bytes, a NUL, a path through a
// file) takes a slot for good. Only [A-Za-z0-9_-]{1,64} passes, or no id (the runtime makes one).

var SAFE_ID = /^[A-Za-z0-9_-]{1,64}$/;

// A body is read only when it is JSON nested at most this deep (a prediction's body nests 3 deep).
// njs's JSON.parse gives up at a depth of about 30 and the runtime's parser at 128: a body nested
// between the two once reached the runtime unchecked, its id making folders. Counted before parsing.
var MAX_DEPTH = 16;

function refuse(r, id) {
    answer(r, 400, 'id ' + JSON.stringify(String(id)).slice(0, 80) + ' is not allowed: use 1 to 64 of A-Z a-z 0-9 _ -, or leave it out');
}

function answer(r, status, detail) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({detail: detail}) + '\n');
}

// Whether arrays and objects in `text` nest deeper than MAX_DEPTH. Jumps from one of " \ [ ] { }
// to the next: a long string (a data: URI) is one step.
function tooDeep(text) {
    var special = /["\\\[\]{}]/g;
    var level = 0;
    var inString = false;
    var found;
    while ((found = special.exec(text)) !== null) {
        var c = found[0];
        if (inString) {
            if (c === '\\') {
                special.lastIndex += 1;  // the escaped character, whatever it is
            } else if (c === '"') {
                inString = false;
            }
        } else if (c === '"') {
            inString = true;
        } else if (c === '[' || c === '{') {
            level += 1;
            if (level > MAX_DEPTH) {
                return true;
            }
        } else if (c === ']' || c === '}') {
            level -= 1;
        }
    }
    return false;
}

// The endpoint the server does not serve ($cog_serves names the one it does): answered here. The
// runtime would take a prediction's inputs as train()'s arguments ("TypeError: train() got an
// unexpected keyword argument 'duration'").
function elsewhere(r) {
    var serves = r.variables.cog_serves;
    if (r.uri.split('/')[1] === serves) {
        return false;
    }
    answer(r, 404, 'this server runs ' + serves + ', not ' + r.uri.split('/')[1] + ': use /' + serves
        + (serves === 'trainings' ? ' (predictions are served by the same image started without --x-mode train)'
                                  : ' (trainings are served by the same image started with --x-mode train)'));
    return true;
}

// The id in a JSON body (POST /predictions, POST /trainings, PUT /predictions/<id>): checked (an
// unsafe id is refused first, whatever the endpoint), then the endpoint; then the request goes on
// to the server unchanged, except that POST /predictions with an id goes on
// as PUT /predictions/<id> (nginx.conf's @cog_put says why). A body this proxy cannot read (not
// JSON, or nested deeper than MAX_DEPTH) is refused with 400: what it cannot read, it cannot check.
function check(r) {
    var text = r.requestText;
    var rewrite = null;
    if (text) {
        var body = null;
        if (tooDeep(text)) {
            answer(r, 400, 'the request body nests deeper than ' + MAX_DEPTH + ' levels of arrays and objects; send the prediction\'s JSON as documented');
            return;
        }
        try {
            body = JSON.parse(text);
        } catch (e) {
            answer(r, 400, 'the request body is not JSON (' + String(e.message).slice(0, 80) + ')');
            return;
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
